"""common/promtext.py: the one reader of Prometheus text (gateway, TorchServe, drift exporter)."""
from __future__ import annotations

import pytest

from common.promtext import Sample, bucket_delta, buckets, metric_value, quantile, samples

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


HIST = """# TYPE h histogram
h_bucket{le="0.001",x="a"} 2
h_bucket{le="0.002",x="a"} 6
h_bucket{le="+Inf",x="a"} 8
h_bucket{le="0.001",x="b"} 2
h_bucket{le="0.002",x="b"} 2
h_bucket{le="+Inf",x="b"} 2
h_count{x="a"} 8
"""


def test_histogram_quantile_interpolates_like_prometheus():
    both = buckets(HIST, "h")
    assert both == [(0.001, 4.0), (0.002, 8.0), (float("inf"), 10.0)]
    # rank 5 of 10 lies in (0.001, 0.002]: 1 of its 4 observations in
    assert quantile(both, 0.5) == pytest.approx(0.001 + 0.001 * 1 / 4)
    assert quantile(both, 0.2) == pytest.approx(0.001 * 2 / 4)   # first bucket from 0
    assert quantile(both, 0.99) == 0.002                          # in +Inf: the highest bound
    a = buckets(HIST, "h", x="a")
    assert bucket_delta(a, [(0.001, 2.0), (0.002, 2.0), (float("inf"), 2.0)]) == \
        [(0.001, 0.0), (0.002, 4.0), (float("inf"), 6.0)]
    assert quantile(buckets("", "h"), 0.5) is None
