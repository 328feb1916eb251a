"""The API modes on ml-latest-small, through a real TorchServe and the real gateway in front of it.

The issue's "Done when", as tests: a model trained briefly on the MovieLens sample (the ETL, the
hybrid's own fit and export, ``archives build``), served by TorchServe (dev config) with the
gateway (one variant) on free loopback ports; every check runs straight to
``/predictions/recsys`` and through ``/v1/recommendations``. Skipped without
``../shared/data/ml-latest-small`` (unless CI requires it). About 3 minutes, mostly the ETL and
the fit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests

from archives import build as B
from archives.client import TorchServeClient
from archives.server import ServerState
from training.config import TrainConfig
from common.schema import EtlLayout
from testkit.archives import running_server
from tests.gateway.conftest import (MODEL, Client, GatewayProc, load, need_java, setup_keys,
                                    write_experiment)

pytestmark = pytest.mark.timeout(900)
PATHS = ("torchserve", "gateway")
SHORT = replace(TrainConfig(), max_epochs=12, eval_every=4, patience=2, progress=False,
                num_threads=1)


@dataclass
class Stack:
    out: Path
    ts: ServerState
    gw: GatewayProc
    gateway: Client
    users: list[str]
    item_ids: list[str]

    def send(self, body, path: str) -> requests.Response:
        if path == "torchserve":
            return TorchServeClient(self.ts).predict(MODEL, body)
        return self.gateway.rec(body)

    def both(self, body) -> list[requests.Response]:
        """The answer straight from TorchServe and the one through the gateway."""
        return [self.send(body, path) for path in PATHS]


@pytest.fixture(scope="module")
def stack(ml_latest_small_out, tmp_path_factory):
    need_java()
    import shutil

    from common.splits import load_split
    from training.export import export_artifact
    from training.train import fit

    out = tmp_path_factory.mktemp("modes")
    shutil.copytree(ml_latest_small_out / "etl", out / "etl")  # the session's ETL run, copied
    data = load_split(EtlLayout.under(out))
    result = fit(data, SHORT)
    artifact = out / "model" / "serving_artifact"
    export_artifact(result.model, data, artifact, version="1", metrics=None)
    B.build_from_folder(artifact, out, version="1", model_name=MODEL,
                        config=B.ArchiveConfig(batch_size=8, max_batch_delay_ms=5,
                                             min_workers=1, max_workers=1),
                        archive_format="zip-store")
    keys = setup_keys(out)
    write_experiment(out, versions=("1",), weights=(10000,), name="modes")
    with running_server(out, config="dev", models={MODEL: f"{MODEL}-v1.mar"}) as ts:
        gw = GatewayProc(out).start()
        try:
            users = [str(u) for u in data.user_ids[:40]]
            yield Stack(out, ts, gw, Client(gw, keys["client"]), users, list(data.item_ids))
        finally:
            gw.stop()


def answers(stack, body) -> list[dict]:
    """Both answers, checked to be 200s; the gateway's answered by the model (no fallback)."""
    out = []
    for r, where in zip(stack.both(body), PATHS):
        assert r.status_code == 200, (where, r.text)
        d = r.json()
        if where == "gateway":
            assert d["fallback"] is False and d["variant"] == "control", d
        out.append(d)
    return out


def item_ids(d: dict) -> list[str]:
    return [it["item_id"] for it in d["items"]]


def test_similar_to_item_1(stack):
    for d in answers(stack, {"similar_to": "1", "k": 10}):
        assert d["strategy"] == "similar" and d["similar_to"] == "1"
        assert len(item_ids(d)) == 10 and "1" not in item_ids(d)
        assert all(it["categories"] for it in d["items"])
    straight, gateway = answers(stack, {"similar_to": "1", "k": 10})
    assert item_ids(straight) == item_ids(gateway)


def test_candidates_are_answered_whole_in_score_order(stack):
    sent = stack.item_ids[:30] + ["no-such-movie", stack.item_ids[0]]
    for d in answers(stack, {"user_id": stack.users[0], "candidates": sent}):
        assert d["strategy"] == "rerank" and d["ignored_candidates"] == ["no-such-movie"]
        assert sorted(item_ids(d)) == sorted(stack.item_ids[:30])  # exactly the known ones
        scores = [it["score"] for it in d["items"]]
        assert scores == sorted(scores, reverse=True)


def test_diversity_raises_distinct_categories_for_most_users(stack):
    def distinct(d):
        return len({c for it in d["items"] for c in it["categories"]})

    for path in PATHS:
        more = 0
        for u in stack.users:
            plain = stack.send({"user_id": u, "k": 10, "diversity": 0}, path).json()
            diverse = stack.send({"user_id": u, "k": 10, "diversity": 0.7}, path).json()
            assert len(diverse["items"]) == 10
            more += distinct(diverse) > distinct(plain)
        assert more > len(stack.users) / 2, (path, more)


def test_unknown_similar_to_is_404_with_a_reason(stack):
    for r in stack.both({"similar_to": "no-such-movie", "k": 10}):
        assert r.status_code == 404
        d = r.json()
        assert d["reason"] == "unknown_item" and "no-such-movie" in d["message"]


def test_mixed_modes_under_concurrent_load_through_the_gateway(stack):
    u = stack.users[1]
    bodies = [{"user_id": u, "k": 5}, {"similar_to": "1", "k": 5},
              {"user_id": u, "candidates": stack.item_ids[:10]}, {"user_id": u, "diversity": 0.5},
              {"user_id": "new", "history": stack.item_ids[:3], "k": 5},
              {"similar_to": "no-such-movie"}, {"user_id": u, "k": 0},
              {"user_id": u, "similar_to": "1", "diversity": 0.3}] * 4
    alone = [stack.gateway.rec(b) for b in bodies[:8]]
    got = load(stack.gw.url, stack.gateway.key, bodies, concurrency=8)
    for i, (status, d) in enumerate(got):
        ref = alone[i % 8]
        assert status == ref.status_code, (bodies[i], d)
        if status == 200:
            assert item_ids(d) == item_ids(ref.json()) and d["strategy"] == ref.json()["strategy"]
        else:
            assert d["reason"] == ref.json()["reason"]
    assert [r.status_code for r in alone] == [200] * 5 + [404, 400, 200]
    assert "Traceback" not in stack.gw.log()
