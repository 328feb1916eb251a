"""In-process microbenchmark of the retrieval variants (core/retrieval.py): build time,
p50/p99 of ``search(k)``, Recall@k against exact fp32, file size and each variant's memory in a
fresh process. The serving benchmark (benchmarks/serving_bench.py) measures them through
TorchServe; this one isolates the index.

    python -m benchmarks.retrieval_bench --items 100000 --dim 256 --batch 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common.cli import run_cli
from core.retrieval import VARIANTS, build_index, load_index, recall_at_k

_MEMORY_PROBE = """
import sys, torch, faiss, onnxruntime, safetensors.torch
from pathlib import Path
from core.artifact import mmap_safetensors
from core.retrieval import load_index
def rss():
    f = dict(l.split(':', 1) for l in open('/proc/self/status'))
    return int(f['RssAnon'].split()[0]) * 1024, int(f['RssFile'].split()[0]) * 1024
cat, _mm = mmap_safetensors(Path(sys.argv[2]) / 'catalog.safetensors')
torch.set_num_threads(1)
a0, f0 = rss()
s = load_index(sys.argv[1], Path(sys.argv[2]), cat['items'], cat['bias'], threads=1)
s.search(torch.randn(8, s.dim), 10)
a1, f1 = rss()
print(a1 - a0, f1 - f0)
"""


def _memory_probe(variant: str, folder: Path) -> tuple[int, int]:
    """(anonymous, file-backed) RSS growth of a fresh process that loads ``variant`` over a
    memory-mapped catalog and searches once: file-backed pages are shared across processes
    through the page cache, anonymous ones are each process's private copy."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, variant, str(folder)], cwd=root,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(root)})
    anon, file = out.stdout.split()[-2:]
    return int(anon), int(file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="build time, p50/p99 of search(k), recall vs fp32, bytes")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=1, help="users per search call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process RSS probe")
    p.set_defaults(fn=_bench)
    return run_cli(p, argv, logs=False)


def _bench(args: argparse.Namespace) -> int:
    import tempfile

    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n, d = args.items, args.dim
    centers = torch.randn(64, d, generator=g)
    items = centers[torch.randint(0, 64, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    bias = 0.1 * torch.randn(n, generator=g)
    eval_users = centers[torch.randint(0, 64, (500,), generator=g)] + 0.5 * torch.randn(500, d, generator=g)
    exact = torch.topk(torch.addmm(bias, eval_users, items.T), args.k).indices
    print(f"catalog {n:,} x {d}, batch {args.batch}, top-{args.k}, {args.threads} thread(s), "
          f"{args.reps} reps, recall@{args.k} over 500 users")
    print("| variant | build s | p50 ms | p99 ms | recall | recall no re-rank | files MB | "
          "private MB (est.) | fresh proc anon MB | fresh proc file MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file({"items": items, "bias": bias}, str(folder / "catalog.safetensors"))
        for variant in args.variants.split(","):
            info = build_index(variant, items, bias, folder, threads=args.threads)
            s = load_index(variant, folder, items, bias, threads=args.threads)
            recall = recall_at_k(exact, s.search(eval_users, args.k)[1], args.k)
            raw = recall
            if variant != "fp32":
                raw_s = load_index(variant, folder, items, bias, threads=args.threads,
                                   params={"rerank_factor": 0})
                raw = recall_at_k(exact, raw_s.search(eval_users, args.k)[1], args.k)
            times = []
            for i in range(args.reps + 20):
                u = eval_users[(i * args.batch) % 400:(i * args.batch) % 400 + args.batch]
                t0 = time.perf_counter()
                s.search(u, args.k)
                times.append(time.perf_counter() - t0)
            times = sorted(times[20:])
            p50 = times[len(times) // 2] * 1e3
            p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))] * 1e3
            files = sum(info["files"].values()) / 1e6
            anon = file = float("nan")
            if not args.no_memory:
                anon, file = (x / 1e6 for x in _memory_probe(variant, folder))
            print(f"| {variant} | {info['build_s']:.2f} | {p50:.3f} | {p99:.3f} | {recall:.4f} | {raw:.4f} "
                  f"| {files:.1f} | {s.nbytes_private() / 1e6:.1f} | {anon:.1f} | {file:.1f} |", flush=True)
            del s
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
