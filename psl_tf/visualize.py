"""`python -m psl_tf.visualize`: pictures of a task ladder (psl_tf/cli/visualize.py)."""

if __name__ == "__main__":
  from psl_tf.cli import visualize as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
