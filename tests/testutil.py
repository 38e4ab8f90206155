"""Helpers shared by the test files: the repository's paths, a CLI run in a child process, a
tiny training config, the weights of an .h5 file and the one-line error a CLI must print.

Tests import it as `import testutil` (pytest puts tests/ on the path of the files it collects).
"""

import os
import subprocess
import sys

import h5py

from psl_tf import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "flags", "smoke.flags")


def cli(module, *args, timeout=300, env=None):
  """`python -m module args` from the repository root, the checkout's psl_tf first on the path;
  `env` replaces the environment (PYTHONPATH is set either way)."""
  env = dict(os.environ if env is None else env, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def tiny_config(workdir, **kwargs):
  """A rotation config on the demo data small enough to train in seconds (one step, one epoch
  per stage unless `kwargs` say otherwise)."""
  values = dict(task="rotation", dataset="demo", backbone="cifar_resnet", depth=10, width=8,
                image_size=16, head_hidden=16, batch_size=8, epochs=(1,), steps_per_epoch=1,
                heldout_split="none", workdir=str(workdir), export=False, verbose=0)
  values.update(kwargs)
  return config_lib.Config(**values)


def weights(path):
  """Every dataset of a Keras .weights.h5 file by its path in the file."""
  out = {}
  with h5py.File(path) as f:
    f.visititems(lambda name, item: out.__setitem__(name, item[()])
                 if isinstance(item, h5py.Dataset) else None)
  return out


def one_line_error(result, program):
  """The only stderr line of a CLI that exited with status 2, `program: error: ...`."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), result.stderr[-2000:]
  return lines[0]
