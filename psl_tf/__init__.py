"""psl_tf: Progressive Stage-wise Learning (CVPR 2021) in TensorFlow / Keras 3.

The Python API needs no command line and no flags; each call can follow the others in one
process::

  import psl_tf
  config = psl_tf.Config(task="rotation", epochs=(2,), workdir="runs/rot")
  summary = psl_tf.pretrain(config)                      # every stage, resumable
  report = psl_tf.evaluate("runs/rot", protocol="linear", epochs=2)
  print(report.table())                                  # B1..B5 top-1
  path = psl_tf.export("runs/rot", stage=3)              # SavedModel + backbone.keras

`psl_tf.pretrain`, `psl_tf.evaluate` and `psl_tf.export` are also the modules behind
`python -m psl_tf.train|evaluate|export` (`pretrain` is the stage loop); calling the module
calls its API function. The command lines live in `psl_tf/cli/`.
"""

import importlib
import sys
import types

# oneDNN: psl_tf leaves TF_ENABLE_ONEDNN_OPTS alone (TensorFlow's default: on only on x86
# CPUs with AVX-512-class features). It used to turn the kernels on everywhere, and on CPUs
# without AVX-512 small shapes then crashed the process natively (heap corruption at the
# first step: batch 3 at width 8, issue 28; docs/RELIABILITY.md). Opt in with
# `TF_ENABLE_ONEDNN_OPTS=1`: about 3x the training speed on such a CPU
# (`python scripts/bench_onednn.py`).

_LAZY = {"Config": ("psl_tf.config", "Config"), "load_run": ("psl_tf.workdir", "load_run")}
_CALLABLE_MODULES = ("pretrain", "evaluate", "export")


def __getattr__(name):
  # Lazy: `import psl_tf` stays cheap (no TensorFlow) until the API is used.
  if name in _CALLABLE_MODULES:
    return importlib.import_module(f"psl_tf.{name}")
  if name in _LAZY:
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
  raise AttributeError(f"module 'psl_tf' has no attribute {name!r}")


def make_module_callable(module_name, function_name):
  """Makes `sys.modules[module_name](...)` call its `function_name` (Python's documented
  module `__class__` assignment): `psl_tf.evaluate` is the module behind
  `python -m psl_tf.evaluate` and, called, the evaluation API, whichever was imported first.
  """
  module = sys.modules[module_name]

  class CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
      return getattr(self, function_name)(*args, **kwargs)

  CallableModule.__name__ = f"{module_name}.CallableModule"
  module.__class__ = CallableModule
