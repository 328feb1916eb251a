"""Container figures: image size, cold start (container start to first /ping 200) and SIGTERM
stop time of the image's SageMaker `serve`, over a few runs on one small archive.

    python -m benchmarks.container_bench [--runs 3]   # after `make image`

Writes benchmarks/results/container.json and container.md. Podman with host networking, as
`make serve-container`; the archive is the random test artifact (archives/testing.py), so the
figures are the container's own overhead, not a large catalog's load time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

from archives import build as B
from archives import server as S
from archives.testing import make_random_artifact

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "container" / "containers.conf")}


def engine(*args: str, timeout: float = 120) -> str:
    r = subprocess.run([ENGINE, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{ENGINE} {' '.join(args)}: {r.stderr[-2000:]}")
    return r.stdout


def one_run(image: str, model_dir: Path) -> dict:
    name = f"recsys-bench-{uuid.uuid4().hex[:8]}"
    inf, mgt, met, g1, g2 = S.free_ports(5)
    t0 = time.monotonic()
    engine("run", "-d", "--name", name, "--network=host", "-v", f"{model_dir}:/opt/ml/model:ro",
           "-e", f"SAGEMAKER_BIND_TO_PORT={inf}", "-e", f"TS_MANAGEMENT_PORT={mgt}",
           "-e", f"TS_METRICS_PORT={met}", "-e", f"TS_GRPC_INFERENCE_PORT={g1}",
           "-e", f"TS_GRPC_MANAGEMENT_PORT={g2}", "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=1",
           image, "serve")
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{inf}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - t0 > 300:
                raise RuntimeError("no /ping 200 within 300 s")
            time.sleep(0.05)
        cold = time.monotonic() - t0
        while True:  # the entry point logs to stderr once workers and the default are set
            logs = subprocess.run([ENGINE, "logs", name], env=ENV, capture_output=True,
                                  text=True, timeout=30).stderr
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
        code = int(engine("inspect", "-f", "{{.State.ExitCode}}", name).strip())
        return {"cold_start_s": round(cold, 2), "ready_s": ready, "stop_s": round(stop, 2),
                "exit_code": code, "in_flight_status": answered.get("status")}
    finally:
        subprocess.run([ENGINE, "rm", "-f", name], env=ENV, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--image", default="localhost/recsys:latest")
    a = p.parse_args(argv)
    meta = json.loads(engine("image", "inspect", a.image))[0]
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
    (RESULTS / "container.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| image size | cold start (median, to first /ping 200) | SIGTERM to exit (median, 1 request in flight) | runs | load average |",
             "|---|---|---|---|---|",
             f"| {result['size_mb']} MB | {med['cold_start_s']:.1f} s | {med['stop_s']:.1f} s | "
             f"{a.runs} | {result['load_avg'][0]:.1f} |"]
    (RESULTS / "container.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
