"""One bad request in a TorchServe batch gets its own error; the others their normal answers.

In process: the real handler on a real archive (unpacked), driven the way TorchServe's Python
worker drives it: ``ts.service.Service.retrieve_data_for_inference`` turns frontend-shaped
requests into the rows and ``RequestProcessor`` headers, ``ts.context.Context`` carries them, the
metrics are TorchServe's ``MetricsCacheYamlImpl`` over archives/metrics.yaml, and the body of an
``application/json`` request is decoded as ``ts/protocol/otf_message_handler.py`` does (JSON,
or the raw bytes when that fails). The real-TorchServe proof is in test_torchserve.py.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service

from core import validation
from handlers.recommender import RecommenderHandler
from testkit.archives import build_random_versions

REPO = Path(__file__).resolve().parents[2]
JSON = "application/json"


@dataclass
class Answer:
    status: int
    phrase: str | None
    headers: dict[str, str]
    body: dict[str, Any]


class InProcessWorker:
    """The handler as one TorchServe worker holds it (``faults``: the model-config.yaml
    ``handler.faults`` setting of a test archive)."""

    def __init__(self, model_dir: Path, faults: dict | None = None):
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        config = yaml.safe_load((model_dir / manifest["model"]["configFile"]).read_text())
        if faults is not None:
            config["handler"]["faults"] = faults
        metrics = MetricsCacheYamlImpl(str(REPO / "archives" / "metrics.yaml"))
        metrics.initialize_cache()
        self.context = Context("recsys", str(model_dir), manifest, config["batchSize"], None,
                               "0.12.0", metrics=metrics, model_yaml_config=config)
        self.handler = RecommenderHandler()
        self.handler.initialize(self.context)

    def predict(self, bodies: list[Any], content_type: str = JSON,
                headers: dict[int, dict[str, str]] | None = None) -> list[Answer]:
        """One batch: ``bodies[i]`` is sent as request i (a dict/list is sent as JSON text)."""
        batch = []
        for i, body in enumerate(bodies):
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs = {"Content-Type": content_type, **(headers or {}).get(i, {})}
            batch.append({"requestId": f"req-{i}".encode(),
                          "parameters": [{"name": "body", "contentType": content_type,
                                          "value": _worker_decode(raw, content_type)}],
                          "headers": [{"name": k.encode(), "value": v.encode()}
                                      for k, v in hdrs.items()]})
        rps, rows, ids = Service.retrieve_data_for_inference(batch)
        self.context.request_ids, self.context.request_processor = ids, rps
        self.context.metrics.request_ids = ids
        out = self.handler.handle(rows, self.context)
        assert isinstance(out, list) and len(out) == len(bodies)
        return [Answer(rp.get_response_status_code(), rp.get_response_status_phrase(),
                       rp.get_response_headers(), json.loads(text)) for rp, text in zip(rps, out)]


def _worker_decode(raw: bytes, content_type: str) -> Any:
    """What TorchServe's worker hands the handler (otf_message_handler._retrieve_input_data)."""
    if content_type == JSON:
        try:
            return json.loads(raw.decode("utf-8"))
        except Exception:  # noqa: BLE001 - the worker forwards the bytes
            return raw
    if content_type.startswith("text"):
        return raw.decode("utf-8")
    return raw


@pytest.fixture(scope="module")
def plain(model_dir) -> InProcessWorker:
    return InProcessWorker(model_dir)


@pytest.fixture(scope="module")
def faulty(model_dir) -> InProcessWorker:
    return InProcessWorker(model_dir, faults={"error_user_prefix": "fault-"})


GOOD = [{"user_id": str(u), "k": 3} for u in range(1, 8)]


def with_bad(bad: Any, at: int = 3) -> list[Any]:
    return GOOD[:at] + [bad] + GOOD[at:]


def assert_isolated(answers: list[Answer], at: int, status: int, reason: str,
                    reference: list[Answer]) -> Answer:
    """Request ``at`` got its own ``status``/``reason`` error; every other one the same 200
    answer as in ``reference`` (the good requests answered without the bad one)."""
    assert [a.status for a in answers] == [200] * at + [status] + [200] * (len(answers) - at - 1)
    bad = answers[at]
    assert bad.body["code"] == status and bad.body["reason"] == reason, bad.body
    assert bad.body["message"] and bad.phrase == bad.body["message"]
    assert bad.headers["content-type"] == JSON
    good = answers[:at] + answers[at + 1:]
    assert [a.body for a in good] == [a.body for a in reference]
    assert all(a.headers["X-Batch-Size"] == str(len(answers)) for a in answers)
    return bad


def test_engine_exception_fails_only_its_request(faulty, plain):
    reference = plain.predict(GOOD)
    assert [a.status for a in reference] == [200] * 7
    for at in (0, 3, 7):
        answers = faulty.predict(with_bad({"user_id": "fault-1", "k": 3}, at))
        bad = assert_isolated(answers, at, 500, "internal_error", reference)
        assert bad.body["type"] == "InternalServerError" and "injected fault" in bad.body["message"]
    # two faulty requests in one batch: each is found
    answers = faulty.predict([{"user_id": "fault-a"}] + GOOD[:3] + [{"user_id": "fault-b"}])
    assert [a.status for a in answers] == [500, 200, 200, 200, 500]
    assert [a.body for a in answers[1:4]] == [a.body for a in reference[:3]]
    # without a faulty request the faulty archive answers like the plain one
    assert [a.body for a in faulty.predict(GOOD)] == [a.body for a in reference]


def test_an_engine_bug_on_one_request_spares_the_others(plain, monkeypatch):
    """Not only injected faults: any exception of the batched engine call is isolated."""
    reference = plain.predict(GOOD)
    engine = plain.handler.engine
    original = engine.recommend

    def recommend(reqs):
        if any(r.user_id == "boom" for r in reqs):
            raise IndexError("an engine bug")
        return original(reqs)

    monkeypatch.setattr(engine, "recommend", recommend)
    answers = plain.predict(with_bad({"user_id": "boom"}, 5))
    bad = assert_isolated(answers, 5, 500, "internal_error", reference)
    assert "IndexError" not in bad.body["message"]  # internals stay in the model log


@pytest.mark.parametrize("content_type", [JSON, "application/octet-stream", "text/plain"])
def test_nesting_too_deep_is_its_own_400(plain, content_type):
    reference = plain.predict(GOOD)
    for depth in (4, 50, 990, 100_000):
        deep = b'{"user_id": "1", "history": ' + b"[" * depth + b"]" * depth + b"}"
        answers = plain.predict(with_bad(deep), content_type=content_type)
        bad = assert_isolated(answers, 3, 400, validation.TOO_DEEP, reference)
        assert bad.body["type"] == "BadRequest"


def test_decoded_body_at_the_recursion_limit(plain):
    """TorchServe decoded a body nested near the interpreter's recursion limit (its json.loads
    succeeded); the handler runs deeper in the stack, where re-encoding it used to raise
    RecursionError and fail the whole batch."""
    reference = plain.predict(GOOD)
    deep: Any = []
    for _ in range(sys.getrecursionlimit() - 20):
        deep = [deep]
    rows = [{"body": b} for b in with_bad({"user_id": "1", "history": deep})]
    ctx = plain.context
    from ts.context import RequestProcessor

    ctx.request_processor = [RequestProcessor({"body": {"content-type": JSON},
                                               "Content-Type": JSON}) for _ in rows]
    out = plain.handler.handle(rows, ctx)
    statuses = [rp.get_response_status_code() for rp in ctx.request_processor]
    assert statuses == [200] * 3 + [400] + [200] * 4
    assert json.loads(out[3])["reason"] == validation.TOO_DEEP
    assert [json.loads(t) for t in out[:3] + out[4:]] == [a.body for a in reference]


def test_an_answer_that_cannot_be_serialized_is_its_own_500(plain, monkeypatch):
    reference = plain.predict(GOOD)
    engine = plain.handler.engine
    original = engine.recommend

    def recommend(reqs):
        outs = original(reqs)
        for r, o in zip(reqs, outs):
            if r.user_id == "unserializable":
                o.body["items"] = {object()}  # a formatting bug: json.dumps raises TypeError
        return outs

    monkeypatch.setattr(engine, "recommend", recommend)
    answers = plain.predict(with_bad({"user_id": "unserializable"}, 6))
    assert_isolated(answers, 6, 500, "internal_error", reference)


def test_error_rate_is_seeded_and_isolated(model_dir, plain):
    reference = {json.dumps(b): a.body for b, a in zip(GOOD, plain.predict(GOOD))}
    runs = []
    for _ in range(2):
        worker = InProcessWorker(model_dir, faults={"error_rate": 0.5, "seed": 7})
        answers = worker.predict(GOOD + GOOD)
        runs.append([a.status for a in answers])
        for body, a in zip(GOOD + GOOD, answers):
            if a.status == 200:
                assert a.body == reference[json.dumps(body)]
            else:
                assert a.status == 500 and a.body["reason"] == "internal_error"
    assert runs[0] == runs[1]  # the same seed fails the same requests
    assert 0 < runs[0].count(500) < 14


def test_latency_fault_delays_the_batch(model_dir):
    worker = InProcessWorker(model_dir, faults={"latency_ms": 40})
    answers = worker.predict(GOOD[:2])
    assert [a.status for a in answers] == [200, 200]
    assert all(float(a.headers["X-Handler-Ms"]) >= 40 for a in answers)


def test_fault_header_needs_a_faults_archive_with_allow_header(model_dir, plain):
    header = {1: {"X-Recsys-Fault": "error"}}
    reference = plain.predict(GOOD[:3])
    # no faults in the archive: the header is never read
    assert [a.body for a in plain.predict(GOOD[:3], headers=header)] == [a.body for a in reference]
    # faults, but the header not allowed: still ignored
    no_header = InProcessWorker(model_dir, faults={"error_user_prefix": "fault-"})
    assert [a.status for a in no_header.predict(GOOD[:3], headers=header)] == [200] * 3
    allowed = InProcessWorker(model_dir, faults={"allow_header": True})
    answers = allowed.predict(GOOD[:3], headers={1: {"x-recsys-fault": "error"}})
    assert [a.status for a in answers] == [200, 500, 200]
    assert [answers[0].body, answers[2].body] == [reference[0].body, reference[2].body]
    slow = allowed.predict(GOOD[:2], headers={0: {"X-Recsys-Fault": "latency=30"}})
    assert [a.status for a in slow] == [200, 200]
    assert float(slow[0].headers["X-Handler-Ms"]) >= 30
