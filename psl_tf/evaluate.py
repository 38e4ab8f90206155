"""`python -m psl_tf.evaluate`: evaluation from the command line (psl_tf/cli/evaluate.py)."""

if __name__ == "__main__":
  from psl_tf.cli import evaluate as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
