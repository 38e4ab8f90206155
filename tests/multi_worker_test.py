"""Integration tier: scripts/multi_worker_drill.py runs `--strategy=multi_worker` as two
processes on 127.0.0.1 and checks it against its one-process twin (`--strategy=mirrored
--cpu_replicas=2`), that only the chief writes the work directory, and that a worker
SIGKILLed mid-stage and restarted with the same command resumes and finishes with weights
bit-identical to the uninterrupted multi-worker run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_multi_worker_drill_on_loopback(tmp_path):
  out = tmp_path / "drill.json"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "multi_worker_drill.py"),
       f"--root={tmp_path / 'runs'}", f"--json={out}", "--timeout=400"],
      cwd=ROOT, capture_output=True, text=True, timeout=1500)
  assert out.exists(), result.stdout[-3000:] + result.stderr[-2000:]
  checks = json.loads(out.read_text())["checks"]
  for name in ("weights_vs_twin", "chief_files", "event_files", "non_chief_private_dir", "kill",
               "survivor_stops", "resumed", "weights_after_restart", "summary"):
    assert checks[name]["ok"], (name, checks[name])
  assert checks["weights_after_restart"]["max_abs_diff"] == 0
  assert result.returncode == 0, result.stdout[-3000:]
