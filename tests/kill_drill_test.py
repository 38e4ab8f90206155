"""Integration tier: scripts/kill_drill.py SIGKILLs smoke runs at four moments (mid-epoch,
during a weights write, between stages, during export); every restart must end bit-identical
to the uninterrupted run under op determinism."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_kill_drill_four_moments_bit_identical(tmp_path):
  out = tmp_path / "drill.json"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "kill_drill.py"), "--moments=4",
       f"--root={tmp_path / 'runs'}", f"--json={out}", "--timeout=600"],
      cwd=ROOT, capture_output=True, text=True, timeout=3000)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  results = json.loads(out.read_text())
  assert {r["kind"] for r in results} == {"mid_epoch", "weights_write", "between_stages",
                                          "export"}
  assert all(r["ok"] for r in results), results
