"""common/promtext.py: the one reader of Prometheus text (gateway, TorchServe, drift exporter)."""
from __future__ import annotations

from common.promtext import Sample, metric_value, samples

TEXT = """# HELP recsys_gateway_requests_total Requests.
# TYPE recsys_gateway_requests_total counter
recsys_gateway_requests_total{variant="control",status="200"} 7.0
recsys_gateway_requests_total{variant="treatment",status="200"} 3.0
recsys_gateway_requests_total{variant="control",status="503"} 1.0
recsys_gateway_config_last_reload_ok 1.0
RecBatchSize_bucket{le="+Inf",ModelName="recsys",Reason="a \\"quoted\\" one"} 12
"""


def test_samples_read_names_labels_and_values():
    got = list(samples(TEXT))
    assert got[0] == Sample("recsys_gateway_requests_total", {"variant": "control", "status": "200"}, 7.0)
    assert got[3] == Sample("recsys_gateway_config_last_reload_ok", {}, 1.0)
    assert got[4].labels == {"le": "+Inf", "ModelName": "recsys", "Reason": 'a "quoted" one'}
    assert len(got) == 5  # comments skipped


def test_metric_value_sums_the_matching_samples():
    assert metric_value(TEXT, "recsys_gateway_requests_total") == 11.0
    assert metric_value(TEXT, "recsys_gateway_requests_total", variant="control") == 8.0
    assert metric_value(TEXT, "recsys_gateway_requests_total", variant="control", status=200) == 7.0
    assert metric_value(TEXT, "recsys_gateway_config_last_reload_ok") == 1.0
    assert metric_value(TEXT, "recsys_gateway_requests") == 0.0  # a prefix is another metric
