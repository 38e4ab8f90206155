"""`python -m psl_tf.evaluate`: evaluation from the command line (psl_tf/cli/evaluate.py).

Only a `python -m` entry point: the Python API is the function `psl_tf.evaluate`
(`psl_tf.evaluation.protocols.evaluate`). Importing this module as `psl_tf.evaluate` would
shadow that function on the package, so nothing imports it.
"""

if __name__ == "__main__":
  from psl_tf.cli import evaluate as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
