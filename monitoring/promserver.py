"""A real local Prometheus (Debian's ``prometheus`` package) for tests and ``make monitor``.

:func:`render_config` turns the committed scrape config (``monitoring/prometheus/prometheus.yml``)
into a run folder's config: the targets get the given ports (the committed file holds the
contract's defaults), the intervals the short local ones, and ``rule_files`` points at rules
rendered from monitoring/rules.py with the short window. :class:`PrometheusServer` starts the
binary on a loopback port, waits until it is ready, answers queries, and always stops it.
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from common.net import log_tail, wait_for_http
from monitoring.config import SCRAPE_CONFIG, PrometheusConfig, RuleConfig
from monitoring.rules import render_rules

JOBS = {"torchserve": "TS_METRICS_PORT", "recsys-gateway": "GATEWAY_METRICS_PORT",
        "recsys-drift": "DRIFT_METRICS_PORT"}


class PrometheusError(RuntimeError):
    pass


def binary() -> str:
    path = shutil.which("prometheus")
    if not path:
        raise PrometheusError("the prometheus binary is not installed; on Debian/Ubuntu: "
                              "apt-get install prometheus (.ci/run does)")
    return path


def render_config(run_dir: Path, targets: dict[str, str | None], cfg: PrometheusConfig,
                  rules: RuleConfig | None = None) -> Path:
    """Write ``run_dir/prometheus.yml`` and ``run_dir/recsys.rules.yaml``.

    ``targets``: job name -> ``host:port`` (None: leave the job out, e.g. no gateway runs).
    ``rules``: default = RuleConfig with ``cfg.rate_window`` for every rate window."""
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load(SCRAPE_CONFIG.read_text())
    doc["global"]["scrape_interval"] = cfg.scrape_interval
    doc["global"]["evaluation_interval"] = cfg.evaluation_interval
    unknown = set(targets) - {j["job_name"] for j in doc["scrape_configs"]}
    if unknown:
        raise PrometheusError(f"no job {sorted(unknown)} in {SCRAPE_CONFIG}")
    jobs = []
    for job in doc["scrape_configs"]:
        target = targets.get(job["job_name"])
        if target:
            job["static_configs"] = [{"targets": [target]}]
            jobs.append(job)
    doc["scrape_configs"] = jobs
    rules = rules or dataclasses.replace(RuleConfig(), rate_window=cfg.rate_window,
                                         traffic_window=cfg.rate_window,
                                         restart_window=_longer(cfg.rate_window),
                                         memory_freshness_window=_longer(cfg.rate_window))
    (run_dir / "recsys.rules.yaml").write_text(render_rules(rules))
    doc["rule_files"] = ["recsys.rules.yaml"]
    path = run_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _longer(window: str) -> str:
    """Three times a short window (windows that must span a restart or several refreshes)."""
    from monitoring.drift_sources import parse_duration

    return f"{int(3 * (parse_duration(window) or 0))}s"


def check_config(path: Path) -> None:
    """``promtool check config`` (it also checks the rule files it names)."""
    promtool = shutil.which("promtool")
    if not promtool:
        raise PrometheusError("promtool is not installed (apt-get install prometheus)")
    r = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise PrometheusError(f"promtool check config {path} failed:\n{r.stdout}{r.stderr}")


class PrometheusServer:
    """``with PrometheusServer(config, data_dir, port) as prom: prom.query(...)``."""

    def __init__(self, config: Path, data_dir: Path, port: int, cfg: PrometheusConfig = PrometheusConfig(),
                 host: str = "127.0.0.1"):
        self.config, self.data_dir, self.port, self.cfg, self.host = config, data_dir, port, cfg, host
        self.url = f"http://{host}:{port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / "prometheus.log"

    def start(self) -> "PrometheusServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [binary(), f"--config.file={self.config}", f"--storage.tsdb.path={self.data_dir}",
               f"--storage.tsdb.retention.time={self.cfg.retention}",
               f"--web.listen-address={self.host}:{self.port}", "--web.enable-lifecycle",
               "--log.level=warn"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_http(f"{self.url}/-/ready", timeout=self.cfg.ready_timeout_s, proc=self.proc,
                          log=self.log_path, what="prometheus", error=PrometheusError)
        except PrometheusError:
            self.stop()
            raise
        return self

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- HTTP API ------------------------------------------------------------------------------
    def _api(self, path: str, params: dict[str, Any]) -> Any:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        try:
            body = r.json()
        except ValueError:
            raise PrometheusError(f"{path}: HTTP {r.status_code}: {r.text[:300]}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} | ({"time": at} if at is not None else {})
        return self._api("query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._api("query_range", {"query": expr, "start": start, "end": end,
                                         "step": step})["result"]

    def targets(self) -> list[dict]:
        return self._api("targets", {})["activeTargets"]

    def metric_names(self) -> set[str]:
        return set(self._api("label/__name__/values", {}))

    def rules(self) -> list[dict]:
        return self._api("rules", {})["groups"]

    def wait_for(self, expr: str, timeout: float = 60.0, interval: float = 1.0) -> list[dict]:
        """Poll ``expr`` until it returns something; raise with the last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr!r} still empty after {timeout:.0f} s; targets: "
                                      f"{[(t['labels'].get('job'), t['health'], t.get('lastError')) for t in self.targets()]}")
            time.sleep(interval)


__all__ = ["PrometheusServer", "PrometheusError", "render_config", "check_config", "binary", "JOBS"]
