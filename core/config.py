"""The archive's settings: what a version's model-config.yaml carries (TorchServe reads it at
registration; the handler reads ``torch_threads``, ``scoring`` and ``faults``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ArchiveConfig:
    """What goes into an archive's model-config.yaml (per version; TorchServe reads it at
    registration). ``torch_threads`` and ``scoring`` are read by the handler."""

    batch_size: int = 8
    max_batch_delay_ms: int = 2  # measured: 1-2 ms beat 5 ms at every rate (docs/performance.md)
    min_workers: int = 2
    max_workers: int = 2
    response_timeout_s: int = 30
    startup_timeout_s: int = 300
    torch_threads: int = 1  # intra-op threads per worker (torch, FAISS, ONNX Runtime)
    # serving variant (core/retrieval.py VARIANTS): the index built into the archive; the
    # default is the serving benchmark's winner (benchmarks/results/serving.json)
    scoring: str = "ivf"
    # fault injection for test archives only (core/faults.py: latency_ms, error_user_prefix,
    # error_rate, seed, allow_header); None (the default, every shipped archive): no faults
    faults: dict | None = None

