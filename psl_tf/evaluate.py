"""`psl_tf.evaluate(run, protocol=...)`, the evaluation API, and the module behind
`python -m psl_tf.evaluate` (the program itself is psl_tf/cli/evaluate.py)."""

import psl_tf


def evaluate(run, protocol="linear", **kwargs):
  """Evaluates a run (a work directory or a `psl_tf.workdir.Run`); returns a `Report`.

  See `psl_tf.evaluation.protocols.evaluate` for the arguments (`compare=`, `stage=`,
  `output=` and any field of `Settings`, e.g. `epochs=2`, `knn_k=20`)."""
  from psl_tf.evaluation import protocols  # pylint: disable=g-import-not-at-top
  return protocols.evaluate(run, protocol, **kwargs)


if __name__ == "__main__":
  from psl_tf.cli import evaluate as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
else:
  psl_tf.make_module_callable(__name__, "evaluate")
