"""``make monitor OUT=...``: Prometheus against a running ``make serve``, a short load, PNGs.

With TorchServe (and the gateway, when one runs) started by ``make serve OUT=...``, this starts
the drift exporter and a real Prometheus (the committed scrape config with the ports in use and
short windows), drives an open-loop load (common/loadgen.py), then renders the latency
panels' queries to ``OUT/monitoring/*.png`` and writes ``OUT/monitoring/monitor.json``. It stops
what it started; TorchServe and the gateway keep running.

With a gateway running (``OUT/gateway/gateway.json``, written by ``python -m gateway serve``:
``url``, ``metrics_url``; client key ``OUT/gateway/client_key``), the load goes through the
gateway's ``POST /v1/recommendations`` and the gateway is scraped; without one, the load goes to
TorchServe directly (every registered version) and the gateway panels stay empty.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from core.jsonio import write_json
from archives.client import TorchServeClient
from archives.server import ServerError, ServerState
from common import loadgen
from monitoring import config
from monitoring.dashboard import rows
from monitoring.drift_exporter import artifact_dir, build_reference, serve
from monitoring.promserver import PrometheusServer, render_config
from monitoring.render import render_panels

log = logging.getLogger("monitoring.monitor")
GATEWAY_PATH = "/v1/recommendations"
# Mixed into the load now and then: three invalid requests (one per reason) and a visitor whose
# history holds an id the model does not know (the invalid-request and unknown-history panels).
SPECIAL_BODIES = ({"user_id": "1", "k": 0}, {"k": 5}, {"user_id": "1", "history": "10,20"},
                  {"user_id": "visitor", "history": ["no-such-item", "unknown-too"], "k": 10})


@dataclass
class LoadResult:
    path: str
    sent: int
    ok: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    error_kinds: dict[str, int] = field(default_factory=dict)


def known_ids(artifact: Path, max_users: int = 2000) -> tuple[list[str], list[str]]:
    """Known user ids and item ids (most popular first) of a serving artifact."""
    from core.artifact import load_artifact

    art = load_artifact(artifact)
    order = art.popularity.argsort(descending=True).tolist()
    return list(art.user_ids[:max_users]), [art.item_ids[i] for i in order]


def torchserve_load(state: ServerState, model: str, versions: list[str], users: list[str],
                    items: list[str], duration_s: float, rate: float, seed: int = 0,
                    special_every: int = 50) -> list[LoadResult]:
    """Open-loop load split over ``versions`` (``/predictions/<model>/<v>``); one request in
    ``special_every`` is one of :data:`SPECIAL_BODIES` in turn."""
    client = TorchServeClient(state)
    headers = client.auth_header("inference")
    per = rate / max(1, len(versions))
    n = max(2, int(per * duration_s))
    runs = []
    for k, v in enumerate(versions):
        specs = loadgen.request_mix(users, items, n, seed=seed + k, path=f"/predictions/{model}/{v}")
        for j in range(0, n, special_every):
            body = SPECIAL_BODIES[(j // special_every) % len(SPECIAL_BODIES)]
            specs[j] = loadgen.RequestSpec(specs[j].path, body, "special")
        runs.append(loadgen.run_open_loop(state.inference_url, specs, per, warmup=0, headers=headers,
                                          seed=seed + k))

    async def all_runs():
        return await asyncio.gather(*runs)

    out = []
    for v, r in zip(versions, asyncio.run(all_runs())):
        out.append(LoadResult(f"/predictions/{model}/{v}", r.n, r.ok, r.errors, r.p50_ms, r.p99_ms,
                              r.error_kinds))
    return out


@dataclass
class Gateway:
    url: str          # API base URL
    metrics: str      # host:port of /metrics
    key: str          # client key (rights: recommend, events)


def running_gateway(out: Path) -> Gateway | None:
    """The gateway ``make serve`` started for ``out``, if it answers ``/readyz``."""
    state, key = out / "gateway" / "gateway.json", out / "gateway" / "client_key"
    if not state.exists() or not key.exists():
        return None
    try:
        st = json.loads(state.read_text())
        if requests.get(st["url"] + "/readyz", timeout=2).status_code != 200:
            return None
    except (OSError, ValueError, KeyError, requests.RequestException):
        return None
    return Gateway(st["url"], urlparse(st["metrics_url"]).netloc, key.read_text().strip())


def gateway_load(gw: Gateway, users: list[str], items: list[str], duration_s: float, rate: float,
                 seed: int = 0, special_every: int = 50) -> list[LoadResult]:
    """Open-loop load through the gateway (it assigns each user to a variant)."""
    n = max(2, int(rate * duration_s))
    specs = loadgen.request_mix(users, items, n, seed=seed)
    for j in range(0, n, special_every):
        specs[j] = loadgen.RequestSpec("", SPECIAL_BODIES[(j // special_every) % len(SPECIAL_BODIES)], "special")
    r = asyncio.run(loadgen.run_open_loop(gw.url, specs, rate, warmup=0, path=GATEWAY_PATH, seed=seed,
                                          headers={"Authorization": f"Bearer {gw.key}"}))
    return [LoadResult(GATEWAY_PATH, r.n, r.ok, r.errors, r.p50_ms, r.p99_ms, r.error_kinds)]


def start_drift_exporter(out: Path, port: int, cfg: config.DriftConfig) -> tuple[threading.Thread, threading.Event]:
    ref = build_reference(out, cfg)
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(out, ref, cfg, config.RuleConfig().drift_psi_threshold, port),
                         kwargs={"stop": stop}, daemon=True, name="drift-exporter")
    t.start()
    return t, stop


def monitor(out: Path, duration_s: float = 60.0, rate: float = 20.0,
            prom_cfg: config.PrometheusConfig = config.PrometheusConfig(), all_panels: bool = False) -> dict:
    """The whole ``make monitor`` run; returns (and writes) its summary."""
    out = Path(out).resolve()
    try:
        state = ServerState.load(out)
    except ServerError as e:
        raise SystemExit(f"{e}\n(start it with: make serve OUT={out})") from None
    if not state.alive():
        raise SystemExit(f"TorchServe of {out} is not running (pid {state.pid}); start it with: "
                         f"make serve OUT={out}")
    model = next(iter(state.models), "recsys")
    versions = sorted(TorchServeClient(state).versions(model))
    users, items = known_ids(artifact_dir(out))
    mon = out / "monitoring"
    gw = running_gateway(out)
    drift_port, prom_port = config.port("DRIFT_METRICS_PORT"), config.port("PROMETHEUS_PORT")
    drift_cfg = config.DriftConfig(window="all", interval_s=5.0)
    log.info("TorchServe %s (model %s, versions %s); gateway: %s", state.metrics_url, model,
             versions, gw.url if gw else f"none running ({out / 'gateway' / 'gateway.json'})")
    drift_thread, drift_stop = start_drift_exporter(out, drift_port, drift_cfg)
    targets = {"torchserve": f"{state.client_host}:{state.ports['metrics']}",
               "recsys-gateway": gw.metrics if gw else None, "recsys-drift": f"127.0.0.1:{drift_port}"}
    prom_config = render_config(mon / "prometheus", targets, prom_cfg)
    try:
        with PrometheusServer(prom_config, mon / "prometheus" / "data", prom_port, prom_cfg) as prom:
            log.info("Prometheus on %s; load: %.0f req/s for %.0f s %s", prom.url, rate, duration_s,
                     f"through the gateway {gw.url}" if gw else f"to TorchServe versions {versions}")
            prom.wait_for('up{job="torchserve"} == 1', timeout=30)
            if gw:
                prom.wait_for('up{job="recsys-gateway"} == 1', timeout=30)
            start = time.time()
            load = (gateway_load(gw, users, items, duration_s, rate) if gw else
                    torchserve_load(state, model, versions, users, items, duration_s, rate))
            time.sleep(3 * _seconds(prom_cfg.evaluation_interval))
            end = time.time()
            latency = [p for r in rows() if r.title == "Latency" for p in r.panels]
            specs = [p for r in rows() for p in r.panels] if all_panels else latency
            variables = {"experiment": ".*", "model_version": ".*"}
            drawn = render_panels(prom, specs, start - 10, end, mon, variables)
    finally:
        drift_stop.set()
        drift_thread.join(timeout=30)
    summary = {"out": str(out), "prometheus": {"scrape_interval": prom_cfg.scrape_interval,
                                              "rate_window": prom_cfg.rate_window},
               "targets": targets, "load": [asdict(x) for x in load], "panels": drawn,
               "gateway": gw.url if gw else "none running: load sent to TorchServe directly"}
    mon.mkdir(parents=True, exist_ok=True)
    write_json(mon / "monitor.json", summary)
    return summary


def _seconds(text: str) -> float:
    from monitoring.drift_sources import parse_duration

    return parse_duration(text) or 0.0


__all__ = ["monitor", "torchserve_load", "gateway_load", "running_gateway", "known_ids", "LoadResult",
           "Gateway", "SPECIAL_BODIES", "start_drift_exporter"]
