"""The chart's request-size rule follows the handler's body limit (core.validation.MAX_BODY_BYTES):
TorchServe's max_request_size must stay above it, so the largest valid request reaches the
handler and a body over the limit gets the handler's JSON 413 rather than the frontend's empty
one. The chart holds the number once (recsys.handlerBodyLimit in _helpers.tpl); this keeps it
equal to the Python constant."""
from __future__ import annotations

import helm_python
import pytest

from core.validation import MAX_BODY_BYTES
from tests.helm.chart import merge, render, version_set_a


def _with_request_size(size: int):
    return render(merge(version_set_a(), {"torchserve": {"maxRequestSize": size}}))


def test_the_chart_refuses_a_request_size_at_the_handlers_limit():
    with pytest.raises(helm_python.HelmRenderError) as e:
        _with_request_size(MAX_BODY_BYTES)
    assert f"torchserve.maxRequestSize must be above {MAX_BODY_BYTES}," in str(e.value)


def test_one_byte_above_the_handlers_limit_renders_into_config_properties():
    props = _with_request_size(MAX_BODY_BYTES + 1).config_properties()
    assert int(props["max_request_size"]) == MAX_BODY_BYTES + 1


def test_the_default_request_size_is_above_the_handlers_limit():
    assert int(render(version_set_a()).config_properties()["max_request_size"]) > MAX_BODY_BYTES
