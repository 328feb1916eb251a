"""Container figures: image size, cold start (container start to first /ping 200) and SIGTERM
stop time of the image's SageMaker `serve`, over a few runs on one small archive.

    python -m benchmarks.container_bench [--runs 3]   # after `make image`

Writes benchmarks/results/container.json and container.md. Podman with host networking, as
`make serve-container`; the archive is the random test artifact (testkit/archives.py), so the
figures are the container's own overhead, not a large catalog's load time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from common.cli import run_cli
from core.jsonio import write_json
from archives import build as B
from testkit.archives import make_random_artifact
from testkit.container_engine import engine, run_serve

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(image: str, model_dir: Path) -> dict:
    box = run_serve(image, model_dir, timeout=300, prefix="recsys-bench")
    name, inf, cold = box.name, box.inference, box.cold_start_s
    t0 = time.monotonic() - cold  # the container's start
    try:
        while True:  # the entry point logs to stderr once workers and the default are set
            logs = engine("logs", name, timeout=30, check=False).stderr
            if "recsys.container: ready in" in logs or time.monotonic() - t0 > 300:
                break
            time.sleep(0.2)
        ready = next((float(x.split("ready in ")[1].split(" s")[0]) for x in logs.splitlines()
                      if "recsys.container: ready in" in x), None)
        answered = {}

        def in_flight():  # batch delay 1 s: in flight when the stop starts
            r = requests.post(f"http://127.0.0.1:{inf}/invocations", json={"user_id": "1", "k": 3},
                              timeout=60)
            answered["status"] = r.status_code

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.3)
        t1 = time.monotonic()
        engine("stop", "-t", "30", name, timeout=60)
        stop = time.monotonic() - t1
        t.join(60)
        code = int(engine("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip())
        return {"cold_start_s": round(cold, 2), "ready_s": ready, "stop_s": round(stop, 2),
                "exit_code": code, "in_flight_status": answered.get("status")}
    finally:
        box.remove()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--image", default="localhost/recsys:latest")
    p.set_defaults(fn=_run)
    return run_cli(p, argv, logs=False)


def _run(a: argparse.Namespace) -> int:
    meta = json.loads(engine("image", "inspect", a.image).stdout)[0]
    with tempfile.TemporaryDirectory() as tmp:
        art = make_random_artifact(Path(tmp) / "art", n_users=100, n_items=1000, model_version="1")
        B.build_from_folder(art, Path(tmp) / "out", version="1", archive_format="zip-store",
                            config=B.ArchiveConfig(min_workers=1, max_workers=1, batch_size=4,
                                                   max_batch_delay_ms=1000))
        runs = []
        for i in range(a.runs):
            runs.append(one_run(a.image, Path(tmp) / "out" / "model-store"))
            print(f"run {i + 1}: {runs[-1]}")
    med = {k: statistics.median(r[k] for r in runs) for k in ("cold_start_s", "stop_s")}
    result = {"image": a.image, "image_id": meta["Id"][:12], "size_mb": round(meta["Size"] / 1e6),
              "runs": runs, "median": med, "nproc": os.cpu_count(),
              "load_avg": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "container.json", result)
    lines = ["| image size | cold start (median, to first /ping 200) | SIGTERM to exit (median, 1 request in flight) | runs | load average |",
             "|---|---|---|---|---|",
             f"| {result['size_mb']} MB | {med['cold_start_s']:.1f} s | {med['stop_s']:.1f} s | "
             f"{a.runs} | {result['load_avg'][0]:.1f} |"]
    (RESULTS / "container.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
