"""`python -m psl_tf.train`: pre-training from the command line (psl_tf/cli/train.py)."""

if __name__ == "__main__":
  from psl_tf.cli import train as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
