"""`python -m psl_tf.visualize`: pictures of a task ladder (psl_tf/tasks/visualize.py)."""

if __name__ == "__main__":
  from psl_tf.cli import quiet as _quiet  # pylint: disable=g-import-not-at-top
  _quiet.import_tensorflow_quietly()
  from psl_tf.tasks import visualize as _visualize  # pylint: disable=g-import-not-at-top
  _visualize.run()
