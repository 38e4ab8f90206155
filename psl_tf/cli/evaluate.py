r"""Evaluates pre-trained backbones: linear probes on B1..B5, kNN, fine-tuning, transfer.

  python -m psl_tf.evaluate --workdir=runs/rot                      # linear probes, B1..B5
  python -m psl_tf.evaluate --workdir=runs/rot --compare=runs/rot_e2e --protocol=knn
  python -m psl_tf.evaluate --workdir=runs/rot --protocol=finetune --label_fractions=0.01,0.1
  python -m psl_tf.evaluate --workdir=runs/rot --protocol=transfer --dataset=voc/2007 \
      --train_split=trainval --eval_split=test
  python -m psl_tf.evaluate --workdir=runs/rot --protocol=transfer --dataset=folder:/tmp/digits \
      --output=/tmp/rot_on_digits --write_to_runs=false       # the run directory only read

The run's data set, image size and backbone come from its flags.txt unless overridden. The
table (rows = runs, columns = B1..B5) is printed and written with a plot into
<workdir>/eval/ (or --output), and each run keeps its own result JSON in <workdir>/eval/
unless --write_to_runs=false. A mistake in flags or paths ends in one line on stderr.
"""

import contextlib
import sys

from psl_tf.cli import quiet

quiet.import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from psl_tf import options as options_lib
from psl_tf import workdir as wd
from psl_tf.cli import flagdefs
from psl_tf.evaluation import protocols
from psl_tf.evaluation import report


def define_flags(flag_values=flags.FLAGS):
  """Defines the evaluation flags: which runs, where the report goes, and one flag per field
  of `psl_tf.evaluation.protocols.Settings` (idempotent)."""
  if "protocol" in flag_values:
    return flag_values
  flags.DEFINE_string("workdir", None, "Work directory of the pre-training run to evaluate.",
                      flag_values=flag_values)
  flags.DEFINE_integer("stage", None, "Finished stage whose weights to use (default: the last).",
                       flag_values=flag_values)
  flags.DEFINE_list("compare", [], "More work directories to evaluate the same way; each "
                    "becomes a row of the table and a line of the plot.", flag_values=flag_values)
  flags.DEFINE_string("output", None, "Directory of the table and plot (default: "
                      "<workdir>/eval).", flag_values=flag_values)
  flags.DEFINE_boolean("write_to_runs", True, "Also keep each run's result JSON in "
                       "<workdir>/eval/; false writes nothing into the run directories (runs "
                       "one may only read) and needs --output.", flag_values=flag_values)
  for field in options_lib.options_of(protocols.Settings):
    flagdefs.define_flag(field.name, field, flag_values)
  return flag_values


def settings_from_flags(flag_values):
  """`Settings` from parsed flags (each value checked against its declaration)."""
  return protocols.Settings(**{f.name: flag_values[f.name].value
                               for f in options_lib.options_of(protocols.Settings)})


def main(argv, flag_values=None):
  """Runs the program on parsed flags (`flag_values`, default absl's global FLAGS)."""
  FLAGS = flag_values if flag_values is not None else flags.FLAGS  # pylint: disable=invalid-name
  quiet.start("psl_tf.evaluate", argv)
  outputs = contextlib.ExitStack()
  with quiet.one_line_errors("psl_tf.evaluate"):
    if not FLAGS.workdir:
      raise ValueError("--workdir is required (the work directory of a pre-training run)")
    protocols.check_output(FLAGS.output, FLAGS.write_to_runs)
    settings = settings_from_flags(FLAGS)
    paths = [FLAGS.workdir] + [p for p in FLAGS.compare if p and p != FLAGS.workdir]
    the_runs = [wd.load_run(p, FLAGS.stage) for p in paths]
    protocols.check_runs(the_runs, settings)
    # Before any work: the runs are not in use elsewhere and every output can be written.
    outputs.enter_context(protocols.hold_outputs(the_runs, FLAGS.output, FLAGS.write_to_runs))
    evaluation = protocols.Evaluation(the_runs[0], settings)  # checks the data first
  with outputs, quiet.interrupted("psl_tf.evaluate", "no report was written (it is "
                                  "written when every run is evaluated)"):
    rows, written = protocols.evaluate_runs(the_runs, settings, FLAGS.output,
                                            log=lambda text: print(text, flush=True),
                                            evaluation=evaluation,
                                            write_to_runs=FLAGS.write_to_runs)
  print(report.markdown_table(rows, title=written["title"]))
  logging.info("evaluation settings: %s", written["settings"])
  print(f"wrote {written['markdown']}, {written['json']} and {written['plot']}")


def run():
  """The `python -m psl_tf.evaluate` program: defines the flags, parses argv, runs `main`."""
  define_flags()
  sys.modules["__main__"].__doc__ = __doc__  # --help shows this usage, not the shim's
  app.run(main, flags_parser=quiet.one_line_flags_parser("psl_tf.evaluate"))


if __name__ == "__main__":
  run()
