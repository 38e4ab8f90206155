r"""Pre-trains a backbone with Progressive Stage-wise Learning.

  python -m psl_tf.train --task=rotation                   # demo data, offline, minutes
  python -m psl_tf.train --recipe=rotation_cifar10 --dataset=folder:/data/cifar10
  python -m psl_tf.train --flagfile=flags/rotation_imagenet_paper.flags

The flags become a `psl_tf.Config`, and `psl_tf.pretrain(config)` runs it: the command line
and the Python API are one path. Every mistake a user can make in the flags or paths ends in
one line on stderr, exit code 2.
"""

import sys

from psl_tf.cli import quiet

tf = quiet.import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from psl_tf import config as config_lib
from psl_tf import distribute
from psl_tf.cli import flagdefs
from psl_tf import guards
from psl_tf import pretraining as pretrain
from psl_tf import progress
from psl_tf import recipes


class UsageError(ValueError):
  """A mistake in the command line; reported in one line."""


def config_from_flags(flag_values):
  """The run's Config from parsed flags (`--recipe` applied, idempotent): their flags.txt
  texts through `config.from_flags`, the one path from flags to a Config (also taken when a
  run is read back)."""
  try:
    flagdefs.apply_recipe(flag_values)
    return config_lib.from_flags(flagdefs.train_flag_texts(flag_values))
  except ValueError as e:
    raise UsageError(str(e)) from None


def main(argv, flag_values=None):
  """Runs the program on parsed flags (`flag_values`, default absl's global FLAGS)."""
  FLAGS = flag_values if flag_values is not None else flags.FLAGS  # pylint: disable=invalid-name
  quiet.start("psl_tf.train", argv)
  if FLAGS.cpu_replicas > 0:  # before anything starts TensorFlow's devices
    with quiet.one_line_errors("psl_tf.train"):
      distribute.split_cpu(FLAGS.cpu_replicas)
  if FLAGS.deterministic:
    tf.config.experimental.enable_op_determinism()
  with quiet.one_line_errors("psl_tf.train"):  # DataError and UsageError are ValueErrors
    # First: MultiWorkerMirroredStrategy configures collective ops, which must happen before
    # anything (a tf.data pipeline in pretrain.plan, say) starts TensorFlow's runtime.
    flagdefs.apply_recipe(FLAGS)  # so that its values are checked like given ones
    flagdefs.check_ranges(FLAGS)
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.cpu_replicas)
    config = config_from_flags(FLAGS)
  if FLAGS.repair_flags and distribute.is_chief(strategy):
    with quiet.one_line_errors("psl_tf.train"):
      repaired = pretrain.repair_flags(config)
    print(repaired or f"--repair_flags: {config.workdir} has no damaged flags.txt; nothing "
          "to repair", flush=True)
  logging.info("config: %s", config)
  watchdog = guards.FirstBatchWatchdog(FLAGS.first_batch_timeout)
  # ConfigError: nothing was trained; CannotContinue: a full disk, a damaged checkpoint, a
  # finished stage's missing weights (the line says what to do); Ctrl-C: resumable.
  cannot = (pretrain.ConfigError, guards.CannotContinue)
  with quiet.one_line_errors("psl_tf.train", exit_code=1, errors=guards.TrainingDiverged), \
      quiet.one_line_errors("psl_tf.train", errors=cannot), \
      quiet.interrupted("psl_tf.train", "run the same command again to resume from the last "
                        "epoch checkpoint"):
    summary = pretrain.pretrain(config, strategy, callbacks=[watchdog])
  if distribute.is_chief(strategy):
    print(progress.summary_table(summary, config.workdir, summary.get("export")), flush=True)


def run():
  """The `python -m psl_tf.train` program: defines the flags, parses argv, runs `main`."""
  flagdefs.define_train_flags()
  # --help shows this usage (not the shim's) and the recipes.
  sys.modules["__main__"].__doc__ = f"{__doc__}\nRecipes (--recipe=NAME):\n{recipes.listing()}\n"
  app.run(main, flags_parser=quiet.one_line_flags_parser("psl_tf.train"))


if __name__ == "__main__":
  run()
