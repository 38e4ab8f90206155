r"""Pre-trains a backbone with Progressive Stage-wise Learning.

  python -m psl_tf.train --task=rotation                   # demo data, offline, minutes
  python -m psl_tf.train --flagfile=flags/rotation_psl_imagenet.flags

Every mistake a user can make in the flags or paths ends in one line on stderr, exit code 2.
"""

import os
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
from psl_tf.evaluation import online_probes
from psl_tf import pretrain
from psl_tf import progress
from psl_tf import runlock
from psl_tf import workdir as wd



class UsageError(ValueError):
  """A mistake in the command line; reported in one line."""


def config_from_flags(flag_values):
  """The run's Config from parsed flags: their flags.txt texts through `config.from_flags`,
  the one path from flags to a Config (also taken when a run is read back)."""
  try:
    return config_lib.from_flags(flagdefs.train_flag_texts(flag_values))
  except ValueError as e:
    raise UsageError(str(e)) from None


def resolved_flags(flag_values, config):
  """{name: text} of every training flag, as flags.txt stores them (re-usable as a flagfile)."""
  values = flagdefs.train_flag_texts(flag_values)
  values["workdir"] = config.workdir
  return values


def check_resume(config):
  """Raises UsageError if the work directory holds a run made with other learning flags."""
  try:
    pretrain.check_resume(config)
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
    flagdefs.check_ranges(FLAGS)
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.cpu_replicas)
    config = config_from_flags(FLAGS)
    values = resolved_flags(FLAGS, config)
    chief = distribute.is_chief(strategy)
    if chief:  # a user's folder is never written into nor cleaned up
      wd.check_new_or_run(config.workdir)
    check_resume(config)
    the_plan = pretrain.plan(config)
    callbacks = []
    if FLAGS.online_probes:
      callbacks.append(online_probes.for_run(
          the_plan.source, config.dataset, config.data_dir, config.image_size, config.resize_to,
          config.batch_size, os.path.join(config.workdir, "logs", "online_probes"),
          config.seed, config.image_check))
    if config.batch_size % strategy.num_replicas_in_sync:
      raise UsageError(f"--batch_size={config.batch_size} does not split over "
                       f"{strategy.num_replicas_in_sync} replicas")
    # One run per work directory, until this process ends (only the chief writes there).
    lock = runlock.acquire(config.workdir, "psl_tf.train") if chief else None
    if chief:
      try:
        wd.write_flags(config.workdir, values)
      except (OSError, tf.errors.OpError) as e:
        runlock.release(lock)
        raise UsageError(f"cannot write the work directory {config.workdir}: "
                         f"{getattr(e, 'message', None) or e}") from e
  try:
    _train(FLAGS, config, strategy, the_plan, callbacks)
  finally:
    runlock.release(lock)


def _train(FLAGS, config, strategy, the_plan, callbacks):  # pylint: disable=invalid-name
  """Runs every stage of a checked run and prints its summary table."""
  logging.info("config: %s", config)
  watchdog = guards.FirstBatchWatchdog(FLAGS.first_batch_timeout)
  with quiet.one_line_errors("psl_tf.train", exit_code=1, errors=guards.TrainingDiverged), \
      quiet.one_line_errors("psl_tf.train", errors=guards.CannotContinue), \
      quiet.interrupted("psl_tf.train", "run the same command again to resume from the last "
                        "epoch checkpoint"):
    summary = pretrain.run(config, strategy, the_plan=the_plan, callbacks=[*callbacks, watchdog])
  if callbacks and distribute.is_chief(strategy):
    summary = online_probes.merge_history(summary, callbacks[0].history)
    wd.write_summary(config.workdir, summary)
  if distribute.is_chief(strategy):
    print(progress.summary_table(summary, config.workdir, summary.get("export")), flush=True)


def run():
  """The `python -m psl_tf.train` program: defines the flags, parses argv, runs `main`."""
  flagdefs.define_train_flags()
  sys.modules["__main__"].__doc__ = __doc__  # --help shows this usage, not the shim's
  app.run(main, flags_parser=quiet.one_line_flags_parser("psl_tf.train"))


if __name__ == "__main__":
  run()
