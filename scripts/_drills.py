"""What the kill drill and the multi-worker drill share: the smoke run they start, its
environment, how a process is killed, and the stage weights they compare."""

import json
import os
import signal
import subprocess
import sys

import h5py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = 3


def smoke_command(workdir, *extra):
  """The 3-stage smoke run both drills kill: 3 epochs x 3 steps per stage, deterministic."""
  return [sys.executable, "-m", "psl_tf.train", "--task=rotation",
          f"--flagfile={os.path.join(ROOT, 'flags', 'smoke.flags')}", "--epochs=3",
          "--steps_per_epoch=3", "--heldout_split=none", "--deterministic",
          f"--workdir={workdir}", *extra]


def environment(crash_at=None, tf_config=None, tmpdir=None):
  """This environment with the repository importable, and only the given drill settings."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for name in ("TF_CONFIG", "PSL_TF_CRASH_AT"):
    env.pop(name, None)
  if crash_at:
    env["PSL_TF_CRASH_AT"] = crash_at
  if tf_config is not None:
    env["TF_CONFIG"] = json.dumps(tf_config)
  if tmpdir:
    env["TMPDIR"] = tmpdir
  return env


def kill(proc, group=False):
  """SIGKILLs `proc` (and its process group, when it leads its own session) if it still
  runs, then reaps it; returns its exit code (-SIGKILL when the kill landed)."""
  if proc.poll() is None:
    try:
      if group:
        os.killpg(proc.pid, signal.SIGKILL)
      else:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
      pass
  return proc.wait()


def killed(returncode):
  """True when a process died by SIGKILL (not by finishing or failing on its own)."""
  return returncode == -signal.SIGKILL


def stage_weights(workdir):
  """{stage_<k>/<dataset>: array} of every stage's weights file (any layout)."""
  out = {}
  for k in range(1, STAGES + 1):
    with h5py.File(os.path.join(workdir, f"stage_{k}", "backbone.weights.h5")) as f:
      f.visititems(lambda name, item, k=k: out.__setitem__(f"stage_{k}/{name}", item[()])
                   if isinstance(item, h5py.Dataset) else None)
  return out
