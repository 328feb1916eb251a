"""Every TorchServe config the project ships or renders lets the handler's largest body through.

TorchServe's frontend (Netty) answers a body over ``max_request_size`` with an empty 413 before
any handler runs. The handler's own limit (``core.validation.MAX_BODY_BYTES``) must be the
one that bites, with its JSON 413, and the largest valid request (contract: about 1.3 MB) must
reach it. ``sagemaker.properties`` once said 2 MiB while the handler takes 4 MiB (issue 18,
defect 9). Checked: every ``*.properties`` file under archives/config and the helm chart, the
config the container's ``serve`` really writes, and the chart's rendered config.properties."""
from __future__ import annotations

from pathlib import Path

import pytest

from archives import container as K
from archives.properties import CONFIGS, properties_dict, render_config
from core.validation import MAX_BODY_BYTES

REPO = Path(__file__).resolve().parents[2]
LIMIT_KEYS = ("max_request_size", "max_response_size")
SHIPPED = sorted([*(REPO / "archives" / "config").glob("*.properties"),
                  *(REPO / "helm").rglob("*.properties")])


def _check(where: str, props: dict[str, str]) -> None:
    for key in LIMIT_KEYS:
        assert key in props, f"{where}: no {key} (TorchServe's default is 6553500; say it)"
        assert int(props[key]) > MAX_BODY_BYTES, (
            f"{where}: {key}={props[key]} is not above the handler's limit {MAX_BODY_BYTES}")


def test_every_shipped_properties_file_is_found():
    names = {p.name for p in SHIPPED}
    assert {"dev.properties", "prod.properties", "sagemaker.properties"} <= names
    assert CONFIGS["dev"] in SHIPPED and CONFIGS["prod"] in SHIPPED
    assert K.SAGEMAKER_CONFIG in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_properties_take_the_handlers_largest_body(path):
    _check(str(path.relative_to(REPO)), properties_dict(path))


def test_sagemaker_takes_what_prod_takes():
    """The same archive, behind SageMaker or the gateway, refuses the same bodies."""
    sm, prod = properties_dict(K.SAGEMAKER_CONFIG), properties_dict(CONFIGS["prod"])
    assert {k: sm[k] for k in LIMIT_KEYS} == {k: prod[k] for k in LIMIT_KEYS}


def test_the_containers_rendered_config_keeps_the_limits(tmp_path):
    """What ``serve`` writes for TorchServe (ports and paths replaced, the rest copied)."""
    dest = tmp_path / "config.properties"
    render_config(K.SAGEMAKER_CONFIG, dest, ports={"inference": 1, "management": 2, "metrics": 3},
                    host=None, metrics_yaml=tmp_path / "m.yaml", store=tmp_path / "store")
    _check("container serve's config.properties", properties_dict(dest))


def test_the_charts_rendered_config_keeps_the_limits():
    from tests.helm.chart import render, version_set_a

    _check("helm chart's config.properties (default values)",
           render(version_set_a()).config_properties())
