"""Every tunable of the gateway in one typed place.

Ports follow ``../shared/CONTRACTS.md``: ``GATEWAY_PORT`` (API, default 8090) and
``GATEWAY_METRICS_PORT`` (Prometheus, default 8091). The upstream is one TorchServe that holds
every model version of the experiment; locally its URL, token mode and key file come from the
run folder ``OUT/torchserve`` that ``python -m archives serve`` wrote, on EKS from
``GATEWAY_UPSTREAM_URL``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.net import parse_port
from core.validation import MAX_BODY_BYTES
from realtime.config import RealtimeConfig

DEFAULT_PORT = 8090
DEFAULT_METRICS_PORT = 8091


@dataclass(frozen=True)
class GatewayPaths:
    """Files of one gateway under ``OUT/gateway`` (CONTRACTS.md, "Files under OUT")."""

    root: Path

    @classmethod
    def under(cls, out: str | Path) -> "GatewayPaths":
        return cls(Path(out).expanduser().resolve() / "gateway")

    @property
    def out(self) -> Path:
        return self.root.parent

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.yaml"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin_key"

    @property
    def key_hashes(self) -> Path:
        """What the gateway reads: key ids, sha256 hashes, rights, rate limits (no keys)."""
        return self.root / "keys.json"

    @property
    def pseudonym_secret(self) -> Path:
        return self.root / "pseudonym_secret"

    @property
    def exposures(self) -> Path:
        return self.root / "exposures"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def popularity(self) -> Path:
        """Last popularity list fetched from control (so a restart without TorchServe has one)."""
        return self.root / "popularity.json"

    @property
    def state(self) -> Path:
        """pid and ports of a gateway started with ``serve --detach``."""
        return self.root / "gateway.json"

    @property
    def log(self) -> Path:
        return self.root / "gateway.log"

    @property
    def training_events(self) -> Path:
        """The training-event log's default folder: raw user ids, so not under gateway/ with
        the pseudonymized experiment logs (its own access, retention and S3 prefix)."""
        return self.out / "training-events"

    @property
    def torchserve_dir(self) -> Path:
        return self.out / "torchserve"


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's settings. ``from_env`` fills ports from the environment."""

    out: Path = Path("runs/demo")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    # --- upstream (TorchServe) ---------------------------------------------------------------
    upstream_url: str = ""
    """TorchServe inference URL; '' = from OUT/torchserve/server.json."""
    management_url: str = ""
    """TorchServe management URL (only for token renewal via GET /token); '' = from server.json."""
    model_name: str = "recsys"
    token_auth: bool | None = None
    """None = as OUT/torchserve/server.json says; True reads OUT/torchserve/key_file.json."""
    key_file: Path | None = None
    """TorchServe's key_file.json; None = OUT/torchserve/key_file.json."""
    token_renew_margin_s: float = 300.0
    """Renew TorchServe's inference key (GET /token) this long before it expires."""
    token_check_interval_s: float = 30.0
    token_renew_timeout_s: float = 5.0
    """One GET /token at most this long; a request waits for it only within its own deadline."""
    token_backoff_s: float = 1.0
    """After a failed renewal, no new GET /token for this long, doubling per failure..."""
    token_max_backoff_s: float = 60.0
    """... up to this."""
    upstream_connections: int = 256
    """Pooled connections to TorchServe (one ClientSession for the upstream)."""
    per_version_concurrency: int = 64
    """In-flight requests per model version; more wait (within the deadline) or fall back,
    so a slow version cannot take every connection."""
    # --- per request ---------------------------------------------------------------------------
    deadline_ms: float = 300.0
    """The whole request, fallbacks included."""
    fallback_reserve_ms: float = 100.0
    """Kept back from a treatment's attempt for the control attempt that may follow."""
    max_body_bytes: int = MAX_BODY_BYTES
    """The handler's own limit (4 MiB; the largest valid request fits under it): a bigger body
    gets our JSON 413 at the front door instead of spending the deadline on an upload,
    TorchServe's JSON decoding and the handler's refusal (which a 300 ms deadline would turn
    into a fallback answer)."""
    inflight_bytes_budget: int = 128 * 1024 * 1024
    """Bytes of request bodies handled at once (0 = no budget). Above it a request is shed: 503
    with Retry-After, status_class="shed", outside the error ratio. 128 MiB answers 32
    concurrent 4 MiB bodies; with the cheap pre-parse checks (gateway/validation.py) each costs
    a few times its size, which fits the chart's 1 GiB gateway memory limit
    (benchmarks/gateway_memory.py measures it)."""
    shed_retry_after_s: int = 1
    """Retry-After of a shed answer."""
    http_server: str = "fast"
    """The HTTP server stack: "fast" (httptools, gateway/fastserver.py) or "aiohttp"
    (gateway/aioserver.py). Both enforce the same limits and serve the same routes; fast costs
    0.6x aiohttp's CPU per request through the whole gateway (make bench-gateway)."""
    upstream_client: str = "fast"
    """The HTTP client to TorchServe: "fast" (httptools, gateway/fastclient.py FastClient) or
    "aiohttp" (gateway/upstream.py AiohttpClient)."""
    drain_grace_s: float = 10.0
    """On SIGTERM: how long requests in flight may take to finish."""
    # --- experiment ----------------------------------------------------------------------------
    experiment_file: Path | None = None
    """None = OUT/gateway/experiment.yaml."""
    reload_interval_s: float = 1.0
    """How often the experiment file's content hash is checked (SIGHUP reloads at once)."""
    warm_up_timeout_s: float = 60.0
    """A reload adding a version warms it before switching; past this the switch goes ahead."""
    # --- fallback list -----------------------------------------------------------------------
    popularity_k: int = 1000
    popularity_refresh_s: float = 60.0
    popularity_probe_user: str = "__recsys_gateway_popularity__"
    # --- logs ----------------------------------------------------------------------------------
    log_queue_size: int = 100_000
    """Records waiting to be written, per log; a full queue drops and counts (never blocks)."""
    log_queue_bytes: int = 32 * 1024 * 1024
    """Estimated bytes waiting to be written, per log (the queue's memory bound)."""
    log_max_record_bytes: int = 64 * 1024
    """A record's JSON line is cut to this size (list fields shortened, ``truncated: true``)."""
    log_rotate_bytes: int = 64 * 1024 * 1024
    log_rotate_s: float = 3600.0
    log_batch_s: float = 0.05
    """The log writer takes its queue every this often (at most ~2x this of records wait in
    memory, the SIGKILL loss window's queue part). A longer tick costs less CPU per record at
    a steady rate (the writer's code is cold at every wake): docs/gateway.md, "Performance"."""
    log_fsync_s: float = 1.0
    """fsync the open log file at most this often (0 = after every batch): the records written
    since the last fsync are what a node crash can lose (docs/gateway.md, loss windows)."""
    log_ship_uri: str = ""
    """``s3://bucket/prefix``: rotated files go to ``prefix/<exposures|events>/<hostname>/`` and
    are deleted locally after a verified upload; '' = no shipping."""
    log_retain_bytes: int = 0
    """Cap on the local log files (both logs, open files included): past it the oldest rotated
    files are deleted, shipped or not, and counted. 0 = no cap (local runs; the chart sets it
    below the emptyDir's size limit)."""
    log_ship_interval_s: float = 10.0
    """How often the shipper looks for rotated files (a rotation also wakes it)."""
    log_ship_backoff_max_s: float = 300.0
    """Longest wait between upload retries (backoff doubles from log_ship_interval_s)."""
    shutdown_grace_s: float = 25.0
    """On SIGTERM: the drain of in-flight requests plus the close of the logs (last writes,
    final rotation, last uploads) end within this; keep it below the pod's
    terminationGracePeriodSeconds. Records not written by then are counted as dropped."""
    history_logged: int = 50
    # --- real-time events (docs/realtime.md) ---------------------------------------------------
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    """The recent-event store: on by default with the embedded store; ``REDIS_URL`` names a
    Redis, ``GATEWAY_REALTIME=off`` (or ``--realtime off``) turns reading it off."""
    training_log: bool = True
    """Write the training-event log (raw user ids, the ETL's raw events format)."""
    training_log_dir: Path | None = None
    """None = OUT/training-events (GATEWAY_TRAINING_LOG_DIR). Folder 0700, files 0600."""
    training_log_ship_uri: str = ""
    """``s3://bucket/prefix`` of the training-event log, apart from the experiment logs'
    (GATEWAY_TRAINING_LOG_SHIP_URI); '' = kept locally."""
    training_log_retention_days: float = 30.0
    """Rotated training-event files older than this are deleted locally, shipped or not
    (GATEWAY_TRAINING_LOG_RETENTION_DAYS; the S3 copy's retention is the bucket's lifecycle
    rule). 0 = kept."""
    # --- security ------------------------------------------------------------------------------
    keys_file: Path | None = None
    """The key hashes (keys.json); None = OUT/gateway/keys.json. Kubernetes mounts a Secret."""
    pseudonym_secret_file: Path | None = None
    """The pseudonym HMAC secret; None = OUT/gateway/pseudonym_secret (created on first use).
    A file named here must exist: every replica must share one secret, so none is invented."""
    default_rate_per_s: float = 1000.0
    default_burst: float = 2000.0
    override_header: str = "X-Recsys-Variant"

    @property
    def paths(self) -> GatewayPaths:
        return GatewayPaths.under(self.out)

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_file) if self.keys_file else self.paths.key_hashes

    @property
    def training_log_path(self) -> Path:
        return Path(self.training_log_dir) if self.training_log_dir else \
            self.paths.training_events

    @property
    def experiment_path(self) -> Path:
        return Path(self.experiment_file) if self.experiment_file else self.paths.experiment

    @classmethod
    def from_env(cls, out: str | Path, **overrides: Any) -> "GatewayConfig":
        """Defaults, then GATEWAY_PORT / GATEWAY_METRICS_PORT / GATEWAY_UPSTREAM_URL /
        GATEWAY_LOG_SHIP_URI / GATEWAY_LOG_RETAIN_BYTES / GATEWAY_LOG_FSYNC_S /
        GATEWAY_SHUTDOWN_GRACE_S, then ``overrides`` (keys of this dataclass whose value is not
        None)."""
        env: dict[str, Any] = {}
        for key, var in (("port", "GATEWAY_PORT"), ("metrics_port", "GATEWAY_METRICS_PORT")):
            if os.environ.get(var):
                env[key] = parse_port(os.environ[var], var, allow_zero=True)
        for key, var, typ in (("upstream_url", "GATEWAY_UPSTREAM_URL", str),
                              ("log_ship_uri", "GATEWAY_LOG_SHIP_URI", str),
                              ("log_retain_bytes", "GATEWAY_LOG_RETAIN_BYTES", int),
                              ("log_fsync_s", "GATEWAY_LOG_FSYNC_S", float),
                              ("shutdown_grace_s", "GATEWAY_SHUTDOWN_GRACE_S", float),
                              ("training_log_dir", "GATEWAY_TRAINING_LOG_DIR", Path),
                              ("training_log_ship_uri", "GATEWAY_TRAINING_LOG_SHIP_URI", str),
                              ("training_log_retention_days",
                               "GATEWAY_TRAINING_LOG_RETENTION_DAYS", float)):
            if os.environ.get(var):
                try:
                    env[key] = typ(os.environ[var])
                except ValueError:
                    raise ValueError(f"{var}={os.environ[var]!r} is not a valid {typ.__name__}") from None
        names = {f.name for f in fields(cls)}
        bad = set(overrides) - names
        if bad:
            raise ValueError(f"unknown gateway settings: {sorted(bad)}")
        rt = overrides.pop("realtime", None)
        env["realtime"] = rt if isinstance(rt, RealtimeConfig) else \
            RealtimeConfig.from_env(**(rt or {}))
        cfg = cls(out=Path(out).expanduser().resolve(), **env)
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        cfg.check()
        return cfg

    def check(self) -> None:
        for name in ("port", "metrics_port"):
            parse_port(getattr(self, name), name, allow_zero=True)
        if self.port == self.metrics_port and self.port != 0:
            raise ValueError("the API and metrics ports must differ")
        if self.deadline_ms <= 0 or self.fallback_reserve_ms < 0:
            raise ValueError("deadline_ms must be > 0 and fallback_reserve_ms >= 0")
        if self.fallback_reserve_ms >= self.deadline_ms:
            raise ValueError("fallback_reserve_ms must be below deadline_ms")
        if self.per_version_concurrency < 1 or self.upstream_connections < 1:
            raise ValueError("concurrency limits must be >= 1")
        if self.inflight_bytes_budget < 0:
            raise ValueError("inflight_bytes_budget must be >= 0 (0: no budget)")
        for name in ("http_server", "upstream_client"):
            if getattr(self, name) not in ("aiohttp", "fast"):
                raise ValueError(f"{name} must be 'aiohttp' or 'fast', got "
                                 f"{getattr(self, name)!r}")
        if not 1 <= self.popularity_k <= 1000:
            raise ValueError("popularity_k must be 1..1000 (the handler's k range)")
        self._check_logs()

    def _check_logs(self) -> None:
        if self.log_queue_size < 1 or self.log_queue_bytes < 1:
            raise ValueError("log_queue_size and log_queue_bytes must be >= 1")
        if self.log_max_record_bytes < 4096:
            raise ValueError("log_max_record_bytes must be >= 4096 (a record's fixed fields)")
        if self.log_rotate_bytes < 1 or self.log_rotate_s <= 0:
            raise ValueError("log_rotate_bytes must be >= 1 and log_rotate_s > 0")
        if not 0 < self.log_batch_s <= 10:
            raise ValueError("log_batch_s must be > 0 and <= 10 (seconds between writer wakes)")
        if self.log_fsync_s < 0:
            raise ValueError("log_fsync_s must be >= 0 (0 = fsync every batch)")
        if self.log_ship_uri:
            bucket = self.log_ship_uri[5:].split("/", 1)[0]
            if not self.log_ship_uri.startswith("s3://") or not bucket:
                raise ValueError(f"log_ship_uri {self.log_ship_uri!r} is not s3://bucket[/prefix]")
        if self.log_retain_bytes < 0:
            raise ValueError("log_retain_bytes must be >= 0 (0 = no cap)")
        if 0 < self.log_retain_bytes < 2 * self.log_rotate_bytes:
            raise ValueError(f"log_retain_bytes {self.log_retain_bytes} must be at least twice "
                             f"log_rotate_bytes ({self.log_rotate_bytes}): the two open files "
                             "count against it and cannot be deleted")
        if self.log_ship_interval_s <= 0 or self.log_ship_backoff_max_s < self.log_ship_interval_s:
            raise ValueError("log_ship_interval_s must be > 0 and <= log_ship_backoff_max_s")
        if self.shutdown_grace_s <= 0:
            raise ValueError("shutdown_grace_s must be > 0")
        if self.training_log_ship_uri and (not self.training_log_ship_uri.startswith("s3://")
                                           or not self.training_log_ship_uri[5:].split("/")[0]):
            raise ValueError(f"training_log_ship_uri {self.training_log_ship_uri!r} is not "
                             "s3://bucket[/prefix]")
        if self.training_log_ship_uri and self.training_log_ship_uri.rstrip("/") == \
                self.log_ship_uri.rstrip("/"):
            raise ValueError("training_log_ship_uri must differ from log_ship_uri: the raw-id "
                             "log gets its own prefix (and its own access policy)")
        if self.training_log_retention_days < 0:
            raise ValueError("training_log_retention_days must be >= 0 (0 = kept)")


# Fields exposed as serve options (name -> help); the rest keep their defaults.
SERVE_OPTIONS: dict[str, str] = {
    "host": "bind address",
    "upstream_url": "TorchServe inference URL (default: OUT/torchserve/server.json)",
    "management_url": "TorchServe management URL (token renewal)",
    "key_file": "TorchServe key_file.json (default OUT/torchserve/key_file.json)",
    "model_name": "TorchServe model name",
    "deadline_ms": "per-request deadline, fallbacks included",
    "fallback_reserve_ms": "time kept back from a treatment attempt for control",
    "per_version_concurrency": "in-flight requests per model version",
    "max_body_bytes": "largest request body",
    "inflight_bytes_budget": "bytes of request bodies in flight before shedding (0: no budget)",
    "http_server": "HTTP server: aiohttp or fast",
    "upstream_client": "HTTP client to TorchServe: aiohttp or fast",
    "experiment_file": "experiment YAML (default OUT/gateway/experiment.yaml)",
    "reload_interval_s": "experiment file check interval",
    "popularity_refresh_s": "popularity list refresh interval",
    "token_renew_margin_s": "renew TorchServe's key this long before expiry",
    "token_check_interval_s": "how often the key's expiry is checked",
    "log_queue_size": "exposure/event write queue (a full queue drops and counts)",
    "log_rotate_bytes": "rotate a JSON-lines log at this size",
    "log_queue_bytes": "estimated bytes the write queue may hold per log (a full queue drops)",
    "log_max_record_bytes": "cap of one log record's JSON line (longer ones are truncated)",
    "log_fsync_s": "fsync the open log file this often, 0 = every batch (GATEWAY_LOG_FSYNC_S)",
    "log_batch_s": "the log writer takes its queue this often (seconds)",
    "log_ship_uri": "ship rotated logs to s3://bucket/prefix (GATEWAY_LOG_SHIP_URI)",
    "log_retain_bytes": "cap on local log bytes; oldest rotated files go first, 0 = none "
                        "(GATEWAY_LOG_RETAIN_BYTES)",
    "shutdown_grace_s": "drain + log close budget on SIGTERM (GATEWAY_SHUTDOWN_GRACE_S)",
    "training_log_dir": "training-event log folder (default OUT/training-events; "
                        "GATEWAY_TRAINING_LOG_DIR)",
    "training_log_ship_uri": "ship the training-event log to s3://bucket/prefix "
                             "(GATEWAY_TRAINING_LOG_SHIP_URI)",
    "training_log_retention_days": "delete rotated training-event files after this many days "
                                   "(GATEWAY_TRAINING_LOG_RETENTION_DAYS)",
    "keys_file": "key hashes (default OUT/gateway/keys.json; e.g. a mounted Secret)",
    "pseudonym_secret_file": "pseudonym secret, must exist (default OUT/gateway/pseudonym_secret, "
                             "created on first use)",
}

__all__ = ["GatewayConfig", "GatewayPaths", "SERVE_OPTIONS", "DEFAULT_PORT",
           "DEFAULT_METRICS_PORT", "field"]
