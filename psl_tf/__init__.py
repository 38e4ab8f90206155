"""psl_tf: Progressive Stage-wise Learning (CVPR 2021) in TensorFlow / Keras 3.

The Python API needs no command line and no flags; each call can follow the others in one
process::

  import psl_tf
  config = psl_tf.Config(task="rotation", epochs=(2,), workdir="runs/rot")
  summary = psl_tf.pretrain(config)                      # every stage, resumable
  report = psl_tf.evaluate("runs/rot", protocol="linear", epochs=2)
  print(report.table())                                  # B1..B5 top-1
  path = psl_tf.export("runs/rot", stage=3)              # SavedModel + backbone.keras
  run = psl_tf.load_run("runs/rot")                      # config, stage, build_backbone()

`pretrain`, `evaluate`, `export`, `load_run` and `Config` are plain functions and classes of
the modules named below, re-exported here, loaded on first use so that `import psl_tf` stays
cheap (no TensorFlow). The command lines live in `psl_tf/cli/` (`psl-train`,
`python -m psl_tf.train`, ...).

psl_tf uses TensorFlow throughout (`tf.data`, `tf.distribute`, SavedModel): Keras must run
on its TensorFlow backend. Importing psl_tf with another backend selected (`KERAS_BACKEND`,
or `backend` in keras.json) raises ImportError; the command lines print one line and exit 2.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# oneDNN: off unless the user (or the campaign) sets TF_ENABLE_ONEDNN_OPTS; TensorFlow reads it
# once, at its import. TensorFlow turns its oneDNN kernels on by itself on AVX-512-class x86
# CPUs, and small shapes crash the process natively with them: batch 3 at width 8 died at the
# first step on an AVX2 CPU with the kernels forced on (issue 28) and on a 2-core AVX-512/AMX
# CPU under TensorFlow's own default (docs/RELIABILITY.md). The op is the weight gradient of a
# 1x1 stride-2 convolution with fewer than 16 input channels (`scripts/onednn_repro.py`), which
# training refuses with oneDNN on (psl_tf.guards). Opt in with `TF_ENABLE_ONEDNN_OPTS=1`: about
# 3x the training speed (`python scripts/bench_onednn.py`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

PROGRAMS = ("train", "evaluate", "export", "visualize")


def keras_backend() -> str:
  """The backend Keras runs (or will run) on, found as Keras finds it, without importing
  Keras: the imported Keras' own answer, else $KERAS_BACKEND, else `backend` in
  $KERAS_HOME/keras.json (default ~/.keras, /tmp/.keras when home is not writable), else
  tensorflow."""
  keras = sys.modules.get("keras")
  if keras is not None and hasattr(keras, "config"):
    return str(keras.config.backend())
  if os.environ.get("KERAS_BACKEND"):
    return os.environ["KERAS_BACKEND"]
  home = os.environ.get("KERAS_HOME")
  if not home:
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
      base = "/tmp"
    home = os.path.join(base, ".keras")
  try:
    with open(os.path.join(home, "keras.json")) as f:
      return str(json.load(f).get("backend", "tensorflow"))
  except (OSError, ValueError, AttributeError):
    return "tensorflow"


def _program() -> str | None:
  """`psl_tf.<name>` when this process is one of the package's command lines
  (`psl-<name>` or `python -m psl_tf.<name>`), else None."""
  script = os.path.basename(sys.argv[0]) if sys.argv else ""
  for name in PROGRAMS:
    if script in (f"psl-{name}", f"psl-{name}.exe"):
      return f"psl_tf.{name}"
  argv = list(getattr(sys, "orig_argv", []))
  if "-m" in argv[:-1]:
    module = argv[argv.index("-m") + 1]
    if module in {f"psl_tf.{name}" for name in PROGRAMS}:
      return module
  return None


def _require_tensorflow_backend() -> None:
  backend = keras_backend()
  if backend == "tensorflow":
    return
  message = (f"psl_tf needs Keras' TensorFlow backend, but Keras is set to {backend!r}; "
             "unset KERAS_BACKEND or set KERAS_BACKEND=tensorflow")
  program = _program()
  if program:
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)
  raise ImportError(message)


_require_tensorflow_backend()

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
  from psl_tf.config import Config
  from psl_tf.evaluation.protocols import evaluate
  from psl_tf.exporting import export
  from psl_tf.pretraining import pretrain
  from psl_tf.workdir import load_run

# name -> (module, attribute): the API, loaded on first use.
_API = {
    "Config": ("psl_tf.config", "Config"),
    "pretrain": ("psl_tf.pretraining", "pretrain"),
    "evaluate": ("psl_tf.evaluation.protocols", "evaluate"),
    "export": ("psl_tf.exporting", "export"),
    "load_run": ("psl_tf.workdir", "load_run"),
}

__all__ = ["Config", "pretrain", "evaluate", "export", "load_run", "keras_backend",
           "__version__"]


def __getattr__(name: str) -> Any:
  # Lazy: `import psl_tf` stays cheap (no TensorFlow) until the API is used.
  if name in _API:
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # a plain attribute from now on
    return value
  raise AttributeError(f"module 'psl_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_API))
