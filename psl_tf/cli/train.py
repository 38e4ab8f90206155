r"""Pre-trains a backbone with Progressive Stage-wise Learning.

  python -m psl_tf.train --task=rotation                   # demo data, offline, minutes
  python -m psl_tf.train --flagfile=flags/rotation_psl_imagenet.flags

Every mistake a user can make in the flags or paths ends in one line on stderr, exit code 2.
"""

import os
import re
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
from psl_tf import tasks
from psl_tf import workdir as wd

flagdefs.define_train_flags()
FLAGS = flags.FLAGS


class UsageError(ValueError):
  """A mistake in the command line; reported in one line."""


def _own_flags(flag_values):
  """{name: flag} for the flags defined in psl_tf.cli.flagdefs."""
  return {f.name: f for f in flag_values.get_flags_for_module(flagdefs)}


def task_options(task_cls, flag_values):
  """{option: value} from flags named `<prefix>_<option>` for the task's prefixes."""
  options = {}
  for name, flag in _own_flags(flag_values).items():
    for prefix in task_cls.option_prefixes:
      if name.startswith(prefix + "_"):
        options[name[len(prefix) + 1:]] = flag.value
  return options


def config_from_flags(flag_values):
  """The one place flags become a Config."""
  v = flag_values
  flagdefs.check_ranges(v)
  try:
    epochs = tuple(int(e) for e in v.epochs)
  except ValueError:
    raise UsageError(f"--epochs takes whole numbers, got {','.join(v.epochs)}") from None
  if not epochs or min(epochs) < 1:
    raise UsageError("--epochs must be at least 1 per stage")
  if v.heldout_examples < 0:
    raise UsageError(f"--heldout_examples must be 0 (all) or positive, got {v.heldout_examples}")
  for name in ("batch_size", "image_size"):
    if v[name].value < 1:
      raise UsageError(f"--{name} must be positive, got {v[name].value}")
  task_cls = tasks.get_task_class(v.task)
  workdir = v.workdir or os.path.join(
      "runs", re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{v.task}_{v.mode}_{v.dataset}"))
  return config_lib.Config(
      task=v.task, mode=v.mode, stages=v.stages, levels=v.levels,
      task_options=task_options(task_cls, v),
      dataset=v.dataset, data_dir=v.data_dir, train_split=v.train_split,
      heldout_split=v.heldout_split, heldout_examples=v.heldout_examples,
      image_size=v.image_size, resize=v.resize, image_check=v.image_check,
      shuffle_buffer=v.shuffle_buffer, backbone=v.backbone, depth=v.depth, width=v.width,
      filters_factor=v.filters_factor, recompute=v.recompute, head_hidden=v.head_hidden,
      frozen_bn=v.frozen_bn, sync_bn=v.sync_bn, batch_size=v.batch_size, epochs=epochs,
      precision=v.precision, cache=v.cache,
      steps_per_epoch=v.steps_per_epoch, optimizer=v.optimizer, learning_rate=v.learning_rate,
      momentum=v.momentum, weight_decay=v.weight_decay, lr_schedule=v.lr_schedule,
      lr_step_split=v.lr_step_split, lr_decay=v.lr_decay, warmup_epochs=v.warmup_epochs,
      seed=v.seed, workdir=workdir, export=v.export, verbose=v.verbose)


def resolved_flags(flag_values, config):
  """{name: value} of every own flag, as flags.txt stores them (re-usable as a flagfile)."""
  values = {}
  for name, flag in _own_flags(flag_values).items():
    if flag.value is None:
      continue
    if isinstance(flag.value, bool):
      values[name] = "true" if flag.value else "false"
    elif isinstance(flag.value, list):
      values[name] = ",".join(str(x) for x in flag.value)
    else:
      values[name] = str(flag.value)
  values["workdir"] = config.workdir
  return values


def check_resume(workdir, values):
  """Raises UsageError if `workdir` holds a run made with other (learning) flags."""
  old = wd.read_flags(workdir)
  if old is None:
    return
  changed = sorted(k for k in set(old) | set(values)
                   if k not in flagdefs.RESUME_SAFE and old.get(k) != values.get(k))
  if changed:
    diffs = ", ".join(f"--{k}={old.get(k)} -> {values.get(k)}" for k in changed[:4])
    raise UsageError(f"{workdir} holds a run with other flags ({diffs}); resume with the same "
                     f"flags (--flagfile={os.path.join(workdir, wd.FLAGS_FILE)}) or pick a new "
                     "--workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet.warnings_only_unless_asked()
  if FLAGS.cpu_replicas > 0:  # before anything starts TensorFlow's devices
    try:
      distribute.split_cpu(FLAGS.cpu_replicas)
    except ValueError as e:
      print(f"psl_tf.train: error: {e}", file=sys.stderr)
      sys.exit(2)
  if FLAGS.deterministic:
    tf.config.experimental.enable_op_determinism()
  try:
    # First: MultiWorkerMirroredStrategy configures collective ops, which must happen before
    # anything (a tf.data pipeline in pretrain.plan, say) starts TensorFlow's runtime.
    flagdefs.check_ranges(FLAGS)
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.cpu_replicas)
    config = config_from_flags(FLAGS)
    values = resolved_flags(FLAGS, config)
    check_resume(config.workdir, values)
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
    if distribute.is_chief(strategy):
      try:
        wd.write_flags(config.workdir, values)
      except (OSError, tf.errors.OpError) as e:
        raise UsageError(f"cannot write the work directory {config.workdir}: "
                         f"{getattr(e, 'message', None) or e}") from e
  except (ValueError, OSError) as e:  # DataError and UsageError are ValueErrors
    print(f"psl_tf.train: error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("config: %s", config)
  watchdog = guards.FirstBatchWatchdog(FLAGS.first_batch_timeout)
  try:
    summary = pretrain.run(config, strategy, the_plan=the_plan, callbacks=[*callbacks, watchdog])
  except guards.TrainingDiverged as e:
    print(f"psl_tf.train: error: {e}", file=sys.stderr)
    sys.exit(1)
  if callbacks and distribute.is_chief(strategy):
    summary = online_probes.merge_history(summary, callbacks[0].history)
    wd.write_summary(config.workdir, summary)
  if distribute.is_chief(strategy):
    print(progress.summary_table(summary, config.workdir, summary.get("export")), flush=True)


def run():
  """The `python -m psl_tf.train` program."""
  sys.modules["__main__"].__doc__ = __doc__  # --help shows this usage, not the shim's
  app.run(main, flags_parser=quiet.one_line_flags_parser("psl_tf.train"))


if __name__ == "__main__":
  run()
