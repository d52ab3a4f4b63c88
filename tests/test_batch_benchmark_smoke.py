"""Keep ``python -m benchmarks batch`` working: a tiny run of every part, no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_batch_benchmark_runs_and_uploads_each_batch_once(tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    command = [sys.executable, "-m", "benchmarks", "batch", "--leads", "300", "--small", "50", "--cap", "0"]
    command += ["--creates", "20", "--json", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert [u["leads"] for u in report["upload"]] == [50, 50, 300, 300]
    wait = report["wait"]
    assert (wait["event"], wait["status"]) == ("success", "completed")
    assert wait["requests_per_poll"] == 1.0
    export = report["export"]
    assert export["runs"]["ours"][0]["records"] == export["runs"]["bare"][0]["records"] >= 300
    once = report["exactly_once"]
    assert (once["duplicates"], once["uploads_without_a_batch"], once["titles"]) == (0, 0, 20)
    assert report["machine"]["cpus"] >= 1
