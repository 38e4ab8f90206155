"""`python -m psl_tf.export`: export from the command line (psl_tf/cli/export.py).

Only a `python -m` entry point: the Python API is the function `psl_tf.export`, the library
is `psl_tf.exporting`. Importing this module as `psl_tf.export` would shadow that function on
the package, so nothing imports it.
"""

if __name__ == "__main__":
  from psl_tf.cli import export as _cli  # pylint: disable=g-import-not-at-top
  _cli.run()
