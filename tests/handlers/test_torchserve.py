"""The handler inside a real TorchServe (prod config: token authorization on).

Order matters: the version tests at the end register v2, switch the default and retire v1.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import requests

from archives import server as S
from archives.__main__ import main as cli
from archives.client import curl_lines
from archives.store import mar_name
from common.promtext import metric_value, samples
from testkit.archives import build_random_versions, worker_memory

pytestmark = pytest.mark.timeout(300)


def predict(served, body, version=None, **kw):
    return served.client.predict(served.model, body, version, **kw)


def ok(served, body, version=None):
    r = predict(served, body, version)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


# ---- recommendations ---------------------------------------------------------------------------

def test_known_user(served):
    d = ok(served, {"user_id": "1", "k": 5})
    assert d["strategy"] == "personalized" and d["model_version"] == "1" and d["user_id"] == "1"
    assert len(d["items"]) == 5 and d["ignored_history"] == []
    assert all(set(it) == {"item_id", "score", "title", "categories"} for it in d["items"])
    # "Item 10 (Comedy, Horror)": the random artifact's titles name the categories
    assert all(it["title"].endswith(f"({', '.join(it['categories'])})") for it in d["items"])
    scores = [it["score"] for it in d["items"]]
    assert scores == sorted(scores, reverse=True)
    # integer user ids are the same user
    assert ok(served, {"user_id": 1, "k": 5})["items"] == d["items"]


def test_known_user_excludes_seen_items(served):
    everything = ok(served, {"user_id": "1", "k": 1000, "exclude_seen": False})["items"]
    unseen = ok(served, {"user_id": "1", "k": 1000})["items"]
    assert len(everything) == 500 and 3 <= 500 - len(unseen) <= 12
    assert {i["item_id"] for i in unseen} < {i["item_id"] for i in everything}


def test_history_only_user(served):
    d = ok(served, {"user_id": "visitor-1", "k": 10, "history": ["10", "20", 30, "nope", "999999"]})
    assert d["strategy"] == "history"
    assert d["ignored_history"] == ["nope", "999999"]
    got = {i["item_id"] for i in d["items"]}
    assert len(got) == 10 and not got & {"10", "20", "30"}  # seen items excluded by default


@pytest.mark.parametrize("uid", ["anna@example.com", "Jürgen", "用户42", "x" * 256])
def test_ids_as_users_have_them(served, uid):
    d = ok(served, {"user_id": uid, "k": 3, "history": ["10", "Ju\u0308rgen's item"]})
    assert d["user_id"] == uid and d["strategy"] == "history"
    assert d["ignored_history"] == ["Jürgen's item"]  # canonical (NFC) form echoed


def test_largest_valid_request_fits_every_limit(served):
    """5,000 history ids of 256 characters (~1.3 MB): under the handler's limit, which is under
    TorchServe's max_request_size."""
    body = json.dumps({"user_id": "big", "history": [f"{i:05d}" + "h" * 251 for i in range(5000)]})
    assert len(body) > 1_280_000
    d = ok(served, json.loads(body))
    assert d["strategy"] == "popular" and len(d["ignored_history"]) == 5000


def test_unknown_user_gets_flagged_popular_fallback(served):
    d = ok(served, {"user_id": "stranger", "k": 4})
    assert d["strategy"] == "popular"
    assert [i["item_id"] for i in d["items"]] == ["10", "20", "30", "40"]
    # history made only of unknown ids: still the fallback, and the ids are reported
    d = ok(served, {"user_id": "stranger", "k": 2, "history": ["x1", "x2"]})
    assert d["strategy"] == "popular" and d["ignored_history"] == ["x1", "x2"]


def test_filters(served):
    d = ok(served, {"user_id": "stranger", "k": 5, "filters": {"include_categories": ["Horror"]}})
    assert [i["item_id"] for i in d["items"]] == ["30", "80", "130", "180", "230"]
    assert all("Horror" in i["title"] for i in d["items"])
    d = ok(served, {"user_id": "2", "k": 50, "filters": {"exclude_categories": ["Comedy", "Drama"]}})
    assert d["items"] and not any("Comedy" in i["title"] or "Drama" in i["title"] for i in d["items"])
    d = ok(served, {"user_id": "2", "k": 5, "filters": {"include_categories": ["Western"]}})
    assert d["items"] == []


def test_exclusions(served):
    first = ok(served, {"user_id": "3", "k": 3})["items"]
    excluded = [first[0]["item_id"], first[2]["item_id"], "not-an-item"]
    d = ok(served, {"user_id": "3", "k": 3, "exclude": excluded})
    got = [i["item_id"] for i in d["items"]]
    assert len(got) == 3 and not set(got) & set(excluded) and got[0] == first[1]["item_id"]


def test_text_plain_body_is_accepted(served):
    r = predict(served, json.dumps({"user_id": "1", "k": 2}), content_type="text/plain")
    assert r.status_code == 200 and r.json()["strategy"] == "personalized"


# ---- related items, candidate lists, diversity -------------------------------------------------

def test_similar_to(served):
    d = ok(served, {"similar_to": "10", "k": 10})
    got = [i["item_id"] for i in d["items"]]
    assert d["strategy"] == "similar" and d["user_id"] is None and d["similar_to"] == "10"
    assert len(got) == 10 and "10" not in got
    scores = [i["score"] for i in d["items"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= x <= 1.0 + 1e-6 for x in scores)
    # with a user: that user's seen items are left out; integer ids are the same item
    seen = ({i["item_id"] for i in ok(served, {"user_id": "1", "k": 1000, "exclude_seen": False})["items"]}
            - {i["item_id"] for i in ok(served, {"user_id": "1", "k": 1000})["items"]})
    mine = ok(served, {"user_id": "1", "similar_to": 10, "k": 1000})
    assert mine["user_id"] == "1" and len(mine["items"]) == 499 - len(seen - {"10"})
    assert not seen & {i["item_id"] for i in mine["items"]}


def test_candidates(served):
    sent = ["200", "10", "nope", "4990", "10", "370"]
    d = ok(served, {"user_id": "2", "candidates": sent})
    assert d["strategy"] == "rerank" and d["ignored_candidates"] == ["nope"]
    assert sorted(i["item_id"] for i in d["items"]) == ["10", "200", "370", "4990"]
    scores = [i["score"] for i in d["items"]]
    assert scores == sorted(scores, reverse=True)
    # the same scores as the catalog ranking gives these items
    full = {i["item_id"]: i["score"] for i in ok(served, {"user_id": "2", "k": 1000,
                                                          "exclude_seen": False})["items"]}
    assert all(abs(full[i["item_id"]] - i["score"]) < 1e-5 for i in d["items"])
    top = ok(served, {"user_id": "2", "candidates": sent, "k": 2, "exclude": ["4990"]})
    assert [i["item_id"] for i in top["items"]] == [i["item_id"] for i in d["items"]
                                                    if i["item_id"] != "4990"][:2]


def test_diversity_zero_answers_the_same_bytes(served):
    for body in ({"user_id": "1", "k": 10}, {"user_id": "new", "history": ["10", "20"]},
                 {"user_id": "stranger"}, {"similar_to": "30"},
                 {"user_id": "3", "candidates": ["10", "20", "30", "40"]}):
        plain = predict(served, body)
        zero = predict(served, {**body, "diversity": 0})
        assert plain.status_code == zero.status_code == 200
        assert plain.content == zero.content
        div = ok(served, {**body, "diversity": 0.8})
        assert div["items"][0] == plain.json()["items"][0]  # the most relevant stays first


def test_invocations_accepts_the_new_fields(served):
    r = served.client.invocations({"similar_to": "10", "k": 3, "diversity": 0.5})
    assert r.status_code == 200 and r.json()["strategy"] == "similar"
    assert len(r.json()["items"]) == 3
    r = served.client.invocations({"user_id": "1", "candidates": ["10", "20"]})
    assert r.status_code == 200 and r.json()["strategy"] == "rerank"
    r = served.client.invocations({"similar_to": "no-such-item"})
    assert r.status_code == 404 and r.json()["reason"] == "unknown_item"


# ---- bad requests: each its own 4xx with a message ----------------------------------------------

BAD = [
    ("not json", b"this is not json", 400, "not_json"),
    ("json array", b'[{"user_id": "1"}]', 400, "not_object"),
    ("json string", b'"user 1"', 400, "not_object"),
    ("json number", b"42", 400, "not_object"),
    ("missing user_id", {"k": 5}, 400, "missing_user_id"),
    ("k=0", {"user_id": "1", "k": 0}, 400, "bad_k"),
    ("k=1001", {"user_id": "1", "k": 1001}, 400, "bad_k"),
    ("k='ten'", {"user_id": "1", "k": "ten"}, 400, "bad_k"),
    ("k=2.5", {"user_id": "1", "k": 2.5}, 400, "bad_k"),
    ("history not a list", {"user_id": "1", "history": "10,20"}, 400, "bad_history"),
    ("filters a list", {"user_id": "1", "filters": ["Comedy"]}, 400, "bad_filters"),
    ("filters include a string", {"user_id": "1", "filters": {"include_categories": "Comedy"}}, 400,
     "bad_filters"),
    ("filters unknown key", {"user_id": "1", "filters": {"genre": ["Comedy"]}}, 400, "bad_filters"),
    ("5 MB body", b'{"user_id": "1", "history": [' + b",".join([b'"1234567"'] * 500_000) + b"]}",
     413, "too_large"),
    ("newline in user_id", {"user_id": "a\nb"}, 400, "bad_user_id"),
    ("empty user_id", {"user_id": ""}, 400, "bad_user_id"),
    ("300-character user_id", {"user_id": "x" * 300}, 400, "bad_user_id"),
    ("similar_to with candidates", {"similar_to": "10", "candidates": ["20"]}, 400,
     "conflicting_fields"),
    ("candidates without user", {"candidates": ["10"]}, 400, "missing_user_id"),
    ("empty candidates", {"user_id": "1", "candidates": []}, 400, "bad_candidates"),
    ("1001 candidates", {"user_id": "1", "candidates": list(range(1001))}, 400, "bad_candidates"),
    ("diversity 1.5", {"user_id": "1", "diversity": 1.5}, 400, "bad_diversity"),
    ("similar_to a list", {"similar_to": ["10"]}, 400, "bad_similar_to"),
    ("unknown similar_to", {"similar_to": "no-such-item", "k": 3}, 404, "unknown_item"),
]


@pytest.mark.parametrize("name,body,status,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_request(served, name, body, status, reason):
    r = predict(served, body)
    assert r.status_code == status, r.text
    d = r.json()
    assert d["code"] == status and d["reason"] == reason
    assert d["message"] and r.reason == d["message"]  # the HTTP reason phrase carries it too


def test_body_over_frontend_cap_is_refused_by_torchserve(served):
    r = predict(served, b"x" * (7 * 2**20))
    assert r.status_code == 413 and r.content == b""


def test_form_post_gets_a_hint(served):
    r = served.client.request("inference", "POST", f"/predictions/{served.model}",
                              data='{"user_id": "1"}',
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["message"]


# ---- batching --------------------------------------------------------------------------------

def _concurrent(served, bodies, version=None):
    barrier = threading.Barrier(len(bodies))
    results = [None] * len(bodies)
    url = f"{served.state.inference_url}/predictions/{served.model}" + (f"/{version}" if version else "")
    headers = {"Content-Type": "application/json", **served.client.auth_header("inference")}

    def go(i):
        s = requests.Session()
        barrier.wait()
        results[i] = s.post(url, data=json.dumps(bodies[i]), headers=headers, timeout=60)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_batch_of_8_with_one_bad_request(served):
    bodies = [{"user_id": str(u), "k": 3} for u in range(1, 8)]
    bodies.insert(4, {"user_id": "1", "k": 0})
    for _ in range(3):  # the 8 requests must reach the worker within maxBatchDelay (200 ms)
        rs = _concurrent(served, bodies)
        if all(r.headers.get("X-Batch-Size") == "8" for r in rs):
            break
        time.sleep(0.5)
    assert [r.headers.get("X-Batch-Size") for r in rs] == ["8"] * 8, "not handled as one batch"
    assert [r.status_code for r in rs] == [200] * 4 + [400] + [200] * 3
    assert rs[4].json()["reason"] == "bad_k"
    for body, r in zip(bodies, rs):
        if r.status_code == 200:
            d = r.json()
            assert d["user_id"] == body["user_id"] and len(d["items"]) == 3
            # same answer as alone (batch scoring does not mix rows)
            assert d["items"] == ok(served, body)["items"]


MIXED = [  # every mode, a 404 and a 400 in one batch
    {"user_id": "1", "k": 3},
    {"user_id": "visitor", "k": 3, "history": ["10", "20"]},
    {"similar_to": "30", "k": 3},
    {"user_id": "2", "similar_to": "40", "k": 3, "diversity": 0.5},
    {"user_id": "3", "candidates": ["10", "20", "30", "nope"]},
    {"similar_to": "no-such-item"},
    {"user_id": "4", "k": 3, "diversity": 0.7, "filters": {"exclude_categories": ["Drama"]}},
    {"user_id": "5", "similar_to": "10", "candidates": ["20"]},
]


def test_batch_of_8_mixed_modes(served):
    alone = [predict(served, b) for b in MIXED]
    for _ in range(3):
        rs = _concurrent(served, MIXED)
        if all(r.headers.get("X-Batch-Size") == "8" for r in rs):
            break
        time.sleep(0.5)
    assert [r.headers.get("X-Batch-Size") for r in rs] == ["8"] * 8, "not handled as one batch"
    assert [r.status_code for r in rs] == [200] * 5 + [404, 200, 400]
    assert [r.json()["strategy"] for r in rs if r.status_code == 200] == \
        ["personalized", "history", "similar", "similar", "rerank", "personalized"]
    assert rs[5].json()["reason"] == "unknown_item" and rs[7].json()["reason"] == "conflicting_fields"
    for r, a in zip(rs, alone):
        assert r.status_code == a.status_code and r.json() == a.json()  # as answered alone


# ---- metrics -----------------------------------------------------------------------------------

def test_prometheus_metrics(served):
    text = served.client.metrics()  # the metrics port has no token
    for line in ('RecRequests{ModelName="recsys",ModelVersion="1",Level="Model",Strategy="popular"',
                 'RecInvalidRequests{ModelName="recsys",ModelVersion="1",Level="Model",Reason="bad_k"',
                 'RecScoringLatencySeconds_bucket{', 'RecHandlerLatencySeconds_count{',
                 'RecBatchSize_bucket{', 'RecIgnoredHistoryItems{', "ts_inference_requests_total{",
                 'RecWorkerStarts{ModelName="recsys",ModelVersion="1",Level="Model"',
                 'RecRequests{ModelName="recsys",ModelVersion="1",Level="Model",Strategy="similar"',
                 'RecRequests{ModelName="recsys",ModelVersion="1",Level="Model",Strategy="rerank"',
                 'RecInvalidRequests{ModelName="recsys",ModelVersion="1",Level="Model",Reason="unknown_item"'):
        assert line in text, line
    # one worker-start count per worker, and each worker's resident memory (a plausible size)
    assert metric_value(text, "RecWorkerStarts") >= 1
    rss = {x.labels["Worker"]: x.value for x in samples(text) if x.name == "RecWorkerRssBytes"}
    assert rss and all(50e6 < v < 8e9 for v in rss.values()), rss
    # a batch of 8 was recorded: the histogram has an observation above 7.5
    buckets = {x.labels["le"]: x.value for x in samples(text) if x.name == "RecBatchSize_bucket"}
    assert buckets["+Inf"] > buckets["7.5"]


# ---- token authorization -------------------------------------------------------------------------

def test_token_authorization(served):
    st = served.state
    body = json.dumps({"user_id": "1"})
    h = {"Content-Type": "application/json"}
    no_key = requests.post(f"{st.inference_url}/predictions/recsys", data=body, headers=h)
    wrong = requests.post(f"{st.inference_url}/predictions/recsys", data=body,
                          headers={**h, "Authorization": "Bearer wrong"})
    for r in (no_key, wrong):
        assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException"
    assert requests.get(f"{st.inference_url}/ping").status_code == 400
    assert requests.get(f"{st.management_url}/models").status_code == 400
    # inference key is not the management key
    inf = {"Authorization": f"Bearer {st.keys()['inference']}"}
    assert requests.get(f"{st.management_url}/models", headers=inf).status_code == 400
    right = requests.post(f"{st.inference_url}/predictions/recsys", data=body,
                          headers={**h, **inf})
    assert right.status_code == 200 and right.json()["strategy"] == "personalized"
    assert (st.run_dir / "key_file.json").stat().st_mode & 0o077 == 0  # mode 600
    # keys are renewed with the API key (what the client does when its key expired); the old
    # key stops working, the client reads the new one from key_file.json
    served.client._refresh("inference")
    assert st.keys()["inference"] != inf["Authorization"].split()[1]
    stale = requests.post(f"{st.inference_url}/predictions/recsys", data=body, headers={**h, **inf})
    assert stale.status_code == 400
    assert ok(served, {"user_id": "1"})["strategy"] == "personalized"


def test_printed_curl_lines_work(served):
    lines = curl_lines(served.state, served.model, {"user_id": "1", "k": 2})
    outs = [subprocess.run(ln, shell=True, capture_output=True, text=True, timeout=30).stdout
            for ln in lines[:4]]
    assert json.loads(outs[0])["status"] == "Healthy"
    assert json.loads(outs[1])["strategy"] == "personalized"
    assert json.loads(outs[2])["model_version"] == "1"
    assert json.loads(outs[3])[0]["modelName"] == "recsys"


def test_allowed_urls_restrict_remote_archives(served):
    r = served.client.register("https://example.com/evil.mar", "evil")
    assert r.status_code in (400, 404) and "allowed" in r.json()["message"].lower()


def test_invocations_serves_the_default_model(served):
    r = served.client.invocations({"user_id": "stranger", "k": 2})
    assert r.status_code == 200 and r.json()["strategy"] == "popular"
    assert r.json()["model_version"] == "1"


# ---- memory per worker -----------------------------------------------------------------------------

def test_two_workers_memory(served, record_property):
    c = served.client
    assert c.scale(served.model, "1", 2).status_code == 200
    try:
        mem = worker_memory(served.state)
        assert len(mem) == 2
        for m in mem:
            record_property(f"worker_{m['pid']}", json.dumps({k: round(v, 1) for k, v in m.items()}))
            assert m["uss_mib"] < m["rss_mib"]  # part of each worker's RSS is shared
        print("worker memory:", json.dumps(mem))
        assert ok(served, {"user_id": "1", "k": 2})["strategy"] == "personalized"
    finally:
        assert c.scale(served.model, "1", 1).status_code == 200


# ---- fault injection (handler.faults of a test archive) ---------------------------------------

def test_shipped_archive_ignores_the_fault_header(served):
    body = {"user_id": "1", "k": 3}
    plain = predict(served, body)
    for value in ("error", "latency=3000", "error, latency=50"):
        r = served.client.request("inference", "POST", f"/predictions/{served.model}",
                                  data=json.dumps(body), timeout=2.5,
                                  headers={"Content-Type": "application/json",
                                           "X-Recsys-Fault": value})
        assert r.status_code == 200 and r.content == plain.content


def test_injected_fault_fails_only_its_request_in_a_real_batch(served):
    """An archive built with --faults '{"error_user_prefix": "fault-", "allow_header": true}'
    (batchSize 8, maxBatchDelay 200 ms): in one batch of 8, the fault-prefixed request raises
    inside the engine step and gets a 500 with a message; the other 7 get the answers they get
    alone.
    (Registered after the /invocations tests: a second version changes its defaulting.)"""
    build_random_versions(served.out.parent, versions=(("90", 2),), model_name=served.model,
                          delay_ms=200, faults={"error_user_prefix": "fault-", "allow_header": True})
    c = served.client
    r = c.register(mar_name(served.model, "90"), served.model, initial_workers=1)
    assert r.status_code == 200, r.text
    try:
        bodies = [{"user_id": str(u), "k": 3} for u in range(1, 8)]
        bodies.insert(3, {"user_id": "fault-7", "k": 3})
        alone = [predict(served, b, "90") for b in bodies]
        assert [a.status_code for a in alone] == [200] * 3 + [500] + [200] * 4
        for _ in range(3):  # the 8 requests must reach the worker within maxBatchDelay
            rs = _concurrent(served, bodies, version="90")
            if all(r.headers.get("X-Batch-Size") == "8" for r in rs):
                break
            time.sleep(0.5)
        assert [r.headers.get("X-Batch-Size") for r in rs] == ["8"] * 8, "not handled as one batch"
        assert [r.status_code for r in rs] == [200] * 3 + [500] + [200] * 4
        bad = rs[3].json()
        assert bad["code"] == 500 and bad["type"] == "InternalServerError"
        assert bad["reason"] == "internal_error" and "injected fault" in bad["message"]
        for r, a in zip(rs, alone):
            if r.status_code == 200:
                assert r.json()["items"] == a.json()["items"] and r.json()["model_version"] == "90"
        # allow_header: TorchServe hands the request's X-Recsys-Fault header to the handler
        r = c.request("inference", "POST", f"/predictions/{served.model}/90",
                      data=json.dumps(bodies[0]),
                      headers={"Content-Type": "application/json", "X-Recsys-Fault": "error"})
        assert r.status_code == 500 and "injected fault" in r.json()["message"]
    finally:
        assert c.unregister(served.model, "90").status_code == 200


# ---- versions through the management API (run last: they change the default) ------------------

def test_demo_requests_command(served, capsys):
    assert cli(["demo-requests", "--out", str(served.out)]) == 0
    text = capsys.readouterr().out
    for strategy in ("strategy=personalized", "strategy=history", "strategy=popular",
                     "strategy=similar", "strategy=rerank"):
        assert strategy in text
    assert "ignored_history=['no-such-item']" in text
    assert "ignored_candidates=['no-such-item']" in text


def test_versions_register_set_default_retire(served, capsys):
    c, out, m = served.client, str(served.out), served.model
    assert cli(["register", "--out", out, "--version", "2", "--workers", "1"]) == 0
    assert set(c.versions(m)) == {"1", "2"}
    assert c.default_version(m) == "1"  # registering does not switch traffic
    assert ok(served, {"user_id": "1"}, version="1")["model_version"] == "1"
    assert ok(served, {"user_id": "1"}, version="2")["model_version"] == "2"
    assert ok(served, {"user_id": "1"})["model_version"] == "1"
    # the two versions are different models
    assert ok(served, {"user_id": "1"}, "1")["items"] != ok(served, {"user_id": "1"}, "2")["items"]
    # the default cannot be retired
    assert cli(["retire", "--out", out, "--version", "1"]) == 1
    assert c.unregister(m, "1").status_code == 403

    assert cli(["set-default", "--out", out, "--version", "2"]) == 0
    assert c.default_version(m) == "2"
    assert ok(served, {"user_id": "1"})["model_version"] == "2"
    assert cli(["retire", "--out", out, "--version", "1"]) == 0
    assert set(c.versions(m)) == {"2"}
    assert predict(served, {"user_id": "1"}, version="1").status_code == 404
    assert ok(served, {"user_id": "1"})["model_version"] == "2"
    # TorchServe quirk (docs/serving.md): after an unregister /invocations needs model_name
    assert c.invocations({"user_id": "1"}, model_name=m).json()["model_version"] == "2"
    capsys.readouterr()
    assert cli(["versions", "--out", out]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == {"2": {"default": True, "url": "recsys-v2.mar", "workers": ["READY"],
                            "batchSize": 8, "maxBatchDelay": 5}}
    assert S.ServerState.load(served.out).alive()
