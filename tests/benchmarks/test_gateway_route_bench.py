"""benchmarks/gateway_route_bench.py: the in-process driver runs the real route, and its
byte-for-byte output check tells equal outputs from different ones."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import gateway_route_bench as G

SCRIPT = Path(G.__file__).resolve()


def _dump(folder: Path, n: int = 120) -> dict:
    r = subprocess.run([sys.executable, str(SCRIPT), "--dump", str(folder), "--n", str(n),
                        "--warmup", "10"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_driver_measures_the_route_and_checks_outputs_byte_for_byte(tmp_path):
    res = _dump(tmp_path / "a")
    assert res["n"] == 120 and res["process_us"] > 0 and res["main_thread_us"] > 0
    answers = json.loads((tmp_path / "a" / "answers.json").read_text())
    statuses = [a["status"] for a in answers]
    assert len(answers) == 120 and statuses.count(400) == 4 and statuses.count(200) == 116
    assert all(a["headers"]["X-Request-Id"] == f"bench-{10 + i}" for i, a in enumerate(answers)
               if a["status"] == 200)
    spliced = json.loads(answers[1]["body"])
    assert spliced["experiment"] == "bench" and spliced["fallback"] is False
    assert spliced["items"][0]["item_id"] == "10"
    lines = (tmp_path / "a" / "exposures.jsonl").read_bytes().splitlines()
    assert len(lines) == 116  # one exposure per answer with a handler status; none for a 400
    assert G._check_same(tmp_path / "a", tmp_path / "a") == 0

    _dump(tmp_path / "b")
    assert G._check_same(tmp_path / "a", tmp_path / "b") == 0  # ts aside, the same bytes
    changed = tmp_path / "b" / "exposures.jsonl"
    changed.write_bytes(changed.read_bytes().replace(b'"mode":"user"', b'"mode":"usr"', 1))
    assert G._check_same(tmp_path / "a", tmp_path / "b") == 1
