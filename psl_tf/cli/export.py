r"""Exports a finished stage of a pre-training run as a SavedModel and a Keras model.

  python -m psl_tf.export --workdir=runs/rot [--stage=2] [--output=DIR]

What is written: see `psl_tf.export`.
"""

import sys

from psl_tf.cli import quiet

quiet.import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from psl_tf import exporting as export_lib
from psl_tf import guards


def define_flags(flag_values=flags.FLAGS):
  """Defines the export flags (idempotent)."""
  if "output" in flag_values and "stage" in flag_values:
    return flag_values
  flags.DEFINE_string("workdir", None, "Work directory of the pre-training run.",
                      flag_values=flag_values)
  flags.DEFINE_integer("stage", None, "Finished stage to export (default: the last).",
                       flag_values=flag_values)
  flags.DEFINE_string("output", None, "Output directory (default: <workdir>/export, or "
                      "<workdir>/export_stage_<k> for an earlier stage).",
                      flag_values=flag_values)
  return flag_values


def main(argv, flag_values=None):
  """Runs the program on parsed flags (`flag_values`, default absl's global FLAGS)."""
  FLAGS = flag_values if flag_values is not None else flags.FLAGS  # pylint: disable=invalid-name
  quiet.start("psl_tf.export", argv)
  with quiet.one_line_errors("psl_tf.export", errors=(ValueError, OSError,
                                                      guards.CannotContinue)):
    if not FLAGS.workdir:
      raise ValueError("--workdir is required (the work directory of a pre-training run)")
    path, keras_path, run = export_lib.export_run(
        FLAGS.workdir, FLAGS.stage, FLAGS.output, log=lambda text: print(text, flush=True))
  print(f"exported stage {run.stage} of {run.workdir} ({run.config.backbone}, "
        f"{run.config.image_size} px): SavedModel {path}, Keras model {keras_path}")


def run():
  """The `python -m psl_tf.export` program: defines the flags, parses argv, runs `main`."""
  define_flags()
  sys.modules["__main__"].__doc__ = __doc__  # --help shows this usage
  app.run(main, flags_parser=quiet.one_line_flags_parser("psl_tf.export"))


if __name__ == "__main__":
  run()
