r"""Kill drill: SIGKILL a smoke run at chosen moments, restart it, and check that every
restarted run ends with weights bit-identical to an uninterrupted run.

  python scripts/kill_drill.py --moments=10 [--root=/tmp/kill_drill] [--seed=0]

Every run uses --deterministic (tf.config.experimental.enable_op_determinism). Moments:

  mid_epoch        a timer: a random delay after a stage's first epoch checkpoint appears
  weights_write    half-way through a stage's weights write (temporary file written, not
                   renamed), via PSL_TF_CRASH_AT=weights_tmp_written:<stage>
  between_stages   a stage finished and summary.json written, the next stage not started
  export           the SavedModel written to export.partial, not yet renamed
  before_marker    a stage's weights renamed into place, its DONE marker not yet written

The first five moments cover each kind once, in this order; later ones are drawn at random. For each, the
killed process must have died by SIGKILL, the restart (same command) must exit 0, every
stage's weights must equal the reference bit for bit, summary.json must list every stage, the
export must be complete, and no temporary file may be left. Exit code 1 if any check fails.
Prints one line per moment and, with --json, writes the results.
"""

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np

import _drills  # scripts/_drills.py, next to this file

ROOT = _drills.ROOT
KINDS = ("mid_epoch", "weights_write", "between_stages", "export", "before_marker")
STAGES = _drills.STAGES
CRASH_POINTS = {"weights_write": "weights_tmp_written", "before_marker": "stage_weights_written",
                "between_stages": "stage_finished", "export": "export_written"}


def command(workdir):
  return _drills.smoke_command(workdir)


def environment(crash_at=None):
  return _drills.environment(crash_at=crash_at)


weights = _drills.stage_weights


def run_to_end(workdir, timeout):
  result = subprocess.run(command(workdir), cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=timeout)
  if result.returncode != 0:
    raise RuntimeError(f"exit {result.returncode}: {result.stderr.strip()[-500:]}")
  return result


def kill_at(kind, stage, workdir, rng, timeout):
  """Starts the run and SIGKILLs it at the moment; returns a description of the moment."""
  if kind in CRASH_POINTS:
    point = CRASH_POINTS[kind] + ("" if kind == "export" else f":{stage}")
    proc = subprocess.run(command(workdir), cwd=ROOT, env=environment(point),
                          capture_output=True, text=True, timeout=timeout)
    if not _drills.killed(proc.returncode):
      raise RuntimeError(f"expected death by SIGKILL at {point}, got exit {proc.returncode}: "
                         f"{proc.stderr.strip()[-300:]}")
    return point
  proc = subprocess.Popen(command(workdir), cwd=ROOT, env=environment(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = os.path.join(workdir, f"stage_{stage}", "ckpt", "checkpoint")
  deadline = time.time() + timeout
  try:
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    delay = rng.uniform(0.0, 1.5)
    time.sleep(delay)
  finally:
    _drills.kill(proc)
  if not _drills.killed(proc.returncode):
    raise RuntimeError(f"the run ended (exit {proc.returncode}) before the kill")
  return f"stage {stage} epoch checkpoint + {delay:.2f} s"


def check(workdir, reference):
  problems = []
  got = weights(workdir)
  if got.keys() != reference.keys():
    problems.append("different weight names")
  else:
    diffs = [n for n in reference if not np.array_equal(reference[n], got[n])]
    if diffs:
      worst = max(float(np.max(np.abs(reference[n] - got[n]))) for n in diffs)
      problems.append(f"{len(diffs)} weight arrays differ (max abs diff {worst:g})")
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  if [s["stage"] for s in summary.get("stages", [])] != list(range(1, STAGES + 1)):
    problems.append(f"summary.json stages {[s['stage'] for s in summary.get('stages', [])]}")
  if not os.path.exists(os.path.join(workdir, "export", "saved_model.pb")):
    problems.append("no complete export")
  leftovers = (glob.glob(os.path.join(workdir, "stage_*", "tmp*.h5")) +
               glob.glob(os.path.join(workdir, "**", "*.tmp"), recursive=True) +
               glob.glob(os.path.join(workdir, "*.partial")) +
               glob.glob(os.path.join(workdir, "stage_*", "ckpt")))
  if leftovers:
    problems.append(f"left behind: {', '.join(leftovers)}")
  return problems


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--moments", type=int, default=10)
  parser.add_argument("--root", default="/tmp/psl_tf_kill_drill")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--timeout", type=float, default=600, help="seconds per process")
  parser.add_argument("--json", default="", help="write the results here")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  shutil.rmtree(args.root, ignore_errors=True)
  os.makedirs(args.root)
  reference_dir = os.path.join(args.root, "reference")
  start = time.time()
  run_to_end(reference_dir, args.timeout)
  reference = weights(reference_dir)
  print(f"reference run: {time.time() - start:.0f} s, {len(reference)} weight arrays",
        flush=True)
  results = []
  for i in range(args.moments):
    kind = KINDS[i] if i < len(KINDS) else rng.choice(KINDS)
    stage = rng.randint(1, STAGES - 1) if kind == "between_stages" else rng.randint(1, STAGES)
    workdir = os.path.join(args.root, f"moment_{i}")
    try:
      moment = kill_at(kind, stage, workdir, rng, args.timeout)
      run_to_end(workdir, args.timeout)
      problems = check(workdir, reference)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
      moment, problems = f"stage {stage}", [str(e)]
    results.append({"kind": kind, "moment": moment, "ok": not problems, "problems": problems})
    print(f"{i + 1:2d}. {kind:15s} {moment:40s} "
          f"{'bit-identical' if not problems else 'FAILED: ' + '; '.join(problems)}",
          flush=True)
  passed = sum(r["ok"] for r in results)
  print(f"{passed}/{len(results)} killed runs ended bit-identical to the uninterrupted one "
        f"({time.time() - start:.0f} s)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)
  return 0 if passed == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
