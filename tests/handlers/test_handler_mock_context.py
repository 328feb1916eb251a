"""The handler in process, with a mock of the TorchServe context, as pytorch/serve's handler unit
tests do (ts/torch_handler/unit_tests): no Java, no frontend, no worker process.

``MockContext`` holds only what handlers/recommender.py and ``BaseHandler.handle`` read or call
(model_name, manifest, system_properties["model_dir"], model_yaml_config, metrics,
request_processor, get_request_header, set_response_*), so it is also the list of what the
handler needs from TorchServe. It records each request's status, headers and the metrics
emitted. test_batch_isolation.py drives the same handler through TorchServe's own ``Context``
and ``Service``; test_torchserve.py through a real TorchServe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core import validation as V
from handlers.recommender import RecommenderHandler

JSON = "application/json"


class MockMetric:
    """One metric of the cache: every ``add_or_update`` is kept."""

    def __init__(self, name: str, unit: str, dimension_names: list[str]):
        self.name, self.unit, self.dimension_names = name, unit, dimension_names
        self.updates: list[tuple[float, list[str]]] = []

    def add_or_update(self, value: float, dimension_values: list[str]) -> None:
        assert len(dimension_values) == len(self.dimension_names), (self.name, dimension_values)
        self.updates.append((value, list(dimension_values)))


class MockMetrics:
    """The part of TorchServe's metrics cache the handler uses. Nothing is declared up front
    (``get_metric`` raises, as for a metric missing from the metrics yaml), so the handler adds
    each of its metrics with ``add_metric_to_cache``."""

    def __init__(self) -> None:
        self.metrics: dict[str, MockMetric] = {}
        self.times: list[tuple[str, float, str]] = []

    def get_metric(self, name: str, metric_type: Any) -> MockMetric:
        raise KeyError(name)

    def add_metric_to_cache(self, name: str, unit: str, dimension_names: list[str],
                            metric_type: Any) -> MockMetric:
        self.metrics[name] = MockMetric(name, unit, list(dimension_names))
        return self.metrics[name]

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms", *_: Any,
                 **__: Any) -> None:
        self.times.append((name, value, unit))

    def values(self, name: str) -> list[tuple[float, list[str]]]:
        return self.metrics[name].updates


class MockRequest:
    """One request's headers, as ``ts.context.RequestProcessor`` answers for them."""

    def __init__(self, headers: dict[str, Any]):
        self.headers = headers

    def get_request_property(self, key: str) -> Any:
        return self.headers.get(key)

    def get_request_properties(self) -> dict[str, Any]:
        return self.headers


class MockContext:
    """The context TorchServe hands ``initialize`` and ``handle`` (``model_dir``: an unpacked
    archive). ``new_batch`` sets the requests' headers and forgets earlier answers."""

    def __init__(self, model_dir: Path, model_name: str = "recsys"):
        self.model_name = model_name
        self.manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.model_yaml_config = yaml.safe_load(
            (model_dir / self.manifest["model"]["configFile"]).read_text())
        self.metrics = MockMetrics()
        self.request_processor: list[MockRequest] = []
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.response_headers: dict[int, dict[str, str]] = {}

    def new_batch(self, n: int, content_type: str = JSON) -> None:
        self.request_processor = [MockRequest({"Content-Type": content_type,
                                               "body": {"content-type": content_type}})
                                  for _ in range(n)]
        self.statuses, self.content_types, self.response_headers = {}, {}, {}

    # what BaseHandler.handle asks (describe / explain requests): neither here
    def get_request_header(self, idx: int, key: str) -> Any:
        return self.request_processor[idx].get_request_property(key)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers.setdefault(idx, {})[key] = value

    def status(self, idx: int) -> int:
        return self.statuses.get(idx, (200, ""))[0]


@pytest.fixture
def context(model_dir) -> MockContext:
    return MockContext(model_dir)


@pytest.fixture
def handler(context) -> RecommenderHandler:
    h = RecommenderHandler()
    h.initialize(context)
    return h


# One batch as TorchServe's worker hands it: ``application/json`` bodies already decoded, one
# row per request. Request 2 asks for k = 0.
BATCH = [{"body": {"user_id": "1", "k": 3}},
         {"body": {"user_id": "visitor", "k": 4, "history": ["10", "20"]}},
         {"body": {"user_id": "1", "k": 0}},
         {"body": {"similar_to": "30", "k": 2}}]
BAD = 2


def test_initialize_reads_the_archive_through_the_context(handler, context):
    assert handler.initialized and handler.model_name == "recsys"
    assert handler.model_version == context.manifest["model"]["modelVersion"] == "1"
    assert handler.engine.data.n_items == 500 and handler.faults is None
    # a worker start is counted once, under the archive's name and version
    assert context.metrics.values("RecWorkerStarts") == [(1, ["recsys", "1", "Model"])]


def test_one_bad_request_gets_its_own_400_and_the_others_their_answers(handler, context):
    context.new_batch(len(BATCH))
    out = handler.handle(BATCH, context)

    assert isinstance(out, list) and len(out) == len(BATCH)
    answers = [json.loads(text) for text in out]
    assert [context.status(i) for i in range(len(BATCH))] == [200, 200, 400, 200]
    code, phrase = context.statuses[BAD]
    assert answers[BAD] == {"code": 400, "type": "BadRequest", "reason": V.BAD_K,
                            "message": phrase}
    assert [a["strategy"] for i, a in enumerate(answers) if i != BAD] == \
        ["personalized", "history", "similar"]
    assert [len(a["items"]) for i, a in enumerate(answers) if i != BAD] == [3, 4, 2]
    assert all(a["model_version"] == "1" for i, a in enumerate(answers) if i != BAD)
    # every request, the bad one too, is JSON with the batch's size and handler time
    assert context.content_types == {i: JSON for i in range(len(BATCH))}
    assert {h["X-Batch-Size"] for h in context.response_headers.values()} == {"4"}
    assert all(float(h["X-Handler-Ms"]) > 0 for h in context.response_headers.values())
    # metrics: one invalid request with its reason, three answered, one batch of 4, and
    # BaseHandler's HandlerTime
    m = context.metrics
    assert m.values("RecInvalidRequests") == [(1, ["recsys", "1", "Model", V.BAD_K])]
    assert sorted(dims[-1] for _, dims in m.values("RecRequests")) == \
        ["history", "personalized", "similar"]
    assert m.values("RecBatchSize") == [(4, ["recsys", "1", "Model"])]
    assert [name for name, _, _ in m.times] == ["HandlerTime"]


def test_the_steps_one_by_one_answer_as_handle_does(handler, context):
    context.new_batch(len(BATCH))
    whole = handler.handle(BATCH, context)

    context.new_batch(len(BATCH))
    batch = handler.preprocess(BATCH)
    assert sorted(batch.requests) == [0, 1, 3] and list(batch.errors) == [BAD]
    batch = handler.inference(batch)
    assert sorted(batch.bodies) == [0, 1, 3]
    steps = handler.postprocess(batch)
    assert [context.status(i) for i in range(len(BATCH))] == [200, 200, 400, 200]
    assert [json.loads(t) for t in steps] == [json.loads(t) for t in whole]


def test_a_body_the_worker_could_not_decode_is_its_own_400(handler, context):
    """A body TorchServe failed to decode as JSON reaches the handler as bytes."""
    rows = [BATCH[0], {"body": b"{not json"}, BATCH[3]]
    context.new_batch(len(rows))
    answers = [json.loads(t) for t in handler.handle(rows, context)]
    assert [context.status(i) for i in range(len(rows))] == [200, 400, 200]
    assert answers[1]["reason"] == V.NOT_JSON
    assert [answers[0]["strategy"], answers[2]["strategy"]] == ["personalized", "similar"]
