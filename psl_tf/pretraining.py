"""The stage loop (paper Algorithm 1): for each stage, a fresh head, optimizer and schedule,
then `fit`, then the stage's backbone weights on disk. Resumable at every epoch.

`pretrain(config)` below (re-exported as `psl_tf.pretrain`) runs a whole run from a
`Config`, in Python, with no flags."""

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Sequence
import warnings

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import data
from psl_tf import distribute
from psl_tf.evaluation import online_probes
from psl_tf import exporting as export_lib
from psl_tf import guards
from psl_tf import keras_private
from psl_tf import optim
from psl_tf import progress as progress_lib
from psl_tf import precision
from psl_tf import runlock
from psl_tf import stages as stages_lib
from psl_tf import tasks
from psl_tf import trainer
from psl_tf.tasks import visualize
from psl_tf import workdir as wd
from psl_tf import models
from psl_tf.models import blocks as blocks_lib


@dataclasses.dataclass
class Plan:
  """What a run will do, resolved and checked before the run's models are built (with oneDNN
  on, `plan` builds one throwaway backbone to check its convolutions)."""
  task: tasks.Task
  stages: list[stages_lib.Stage]
  epochs: list[int]
  steps_per_epoch: int
  source: data.Source
  heldout: data.Source | None = None


def plan(config: config_lib.Config) -> Plan:
  """Checks the config against the data and the task; raises ValueError on user error."""
  task = tasks.build_task(config.task, config)
  models.backbone_builder(config.backbone)
  if keras_private.onednn_enabled():
    # Before anything is written to the work directory: a throwaway backbone, only to find
    # the convolutions oneDNN's weight gradient corrupts.
    unsafe = guards.onednn_unsafe_message(
        models.build_backbone(config.backbone, **config.backbone_kwargs()), True)
    if unsafe:
      raise ValueError(unsafe)
  stage_list = stages_lib.make_stages(config.mode, task.num_levels, config.stages, config.levels)
  epochs = config.stage_epochs(len(stage_list))
  source = data.load_source(config.dataset, config.train_split, config.data_dir,
                            config.image_check)
  steps = config.steps_per_epoch
  if not steps:
    if not source.num_examples:
      raise ValueError(f"the size of {config.dataset} is unknown; set --steps_per_epoch")
    steps = source.num_examples // config.batch_size
    if steps < 1:
      raise ValueError(f"{config.dataset} has {source.num_examples} images, fewer than one "
                       f"batch of {config.batch_size}; lower --batch_size")
  warning = guards.small_training_set_warning(source.num_examples, config.batch_size,
                                              config.dataset)
  if warning:
    logging.warning(warning)
  # Small data sets are decoded once here, not in every epoch of every stage (--cache).
  source = data.cache_in_memory(source, config.cache)
  heldout = data.load_heldout_source(config.dataset, config.heldout_split, config.data_dir,
                                     config.image_check, config.train_split)
  return Plan(task, stage_list, epochs, steps, source, heldout)


class _EpochCheckpoint(keras.callbacks.Callback):
  """Saves model, optimizer, epoch, the stage's training seconds so far and every finished
  epoch's (loss, pretext accuracy) at the end of every epoch, so that a resumed stage reports
  its whole training time and curve, not only what ran after the resume."""

  def __init__(self, manager: tf.train.CheckpointManager, epoch_var: tf.Variable,
               seconds_var: tf.Variable, curve_var: tf.Variable) -> None:
    super().__init__()
    self.manager = manager
    self.epoch_var = epoch_var
    self.seconds_var = seconds_var
    self.curve_var = curve_var
    self.seconds_before = float(seconds_var.numpy())
    self.start = time.time()

  def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
    self.start = time.time()

  def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
    logs = logs or {}
    self.epoch_var.assign(epoch + 1)
    self.seconds_var.assign(self.seconds_before + time.time() - self.start)
    curve = self.curve_var.numpy()  # a whole assign: distributed variables take no slices
    curve[epoch] = [logs.get("loss", np.nan), logs.get("accuracy", np.nan)]
    self.curve_var.assign(curve)
    self.manager.save(checkpoint_number=epoch + 1)


def restore_epoch_checkpoint(path: str, core: dict[str, Any],
                             checkpoint: tf.train.Checkpoint) -> None:
  """Restores a stage's epoch checkpoint into `checkpoint`, whose `core` objects (model,
  optimizer, epoch) every checkpoint has; one written before the training time and curve were
  checkpointed restores the core alone (time 0, no curve for its epochs)."""
  keys = {name for name, _ in tf.train.list_variables(path)}
  if any(k.startswith("training_seconds/") for k in keys):
    checkpoint.restore(path).assert_existing_objects_matched()
  else:
    tf.train.Checkpoint(**core).restore(path).assert_existing_objects_matched()


def _stage_header(config: config_lib.Config, stage: stages_lib.Stage, num_stages: int,
                  task: tasks.Task, epochs: int, steps: int) -> str:
  frozen = ""
  if stage.grad_first > 1:
    below = "B1" if stage.grad_first == 2 else f"B1-B{stage.grad_first - 1}"
    frozen = f", {below} frozen ({config.frozen_bn} BN)"
  trained = f"B{stage.grad_first}-B{stage.last}" if stage.grad_first < stage.last else f"B{stage.last}"
  return (f"== stage {stage.index}/{num_stages} [{config.mode}]: train {trained}{frozen} | "
          f"{task.name} level {stage.level}: {task.describe_level(stage.level)} | "
          f"{epochs} epochs x {steps} steps = {epochs * steps} steps, batch {config.batch_size}")


def heldout_metrics(config: config_lib.Config, the_plan: Plan, stage: stages_lib.Stage,
                    model: trainer.StageModel,
                    strategy: tf.distribute.Strategy) -> dict[str, Any]:
  """{'heldout_loss', 'heldout_pretext_accuracy', 'heldout_images'} of the trained stage on
  the held-out split at the stage's level (the evaluation view of the task: centre crops, no
  random flips), or {} when the run has no held-out split."""
  source = the_plan.heldout
  if source is None:
    return {}
  task = the_plan.task
  limit = config.heldout_examples or source.num_examples
  if source.num_examples:
    limit = min(limit, source.num_examples) if limit else source.num_examples
  elements = source.elements.take(limit) if limit else source.elements
  capped = dataclasses.replace(source, elements=elements)
  input_fn = data.make_input_fn(capped, task.example_fn(stage.level, training=False),
                                config.batch_size, seed=config.seed * 100 + stage.index,
                                training=False)
  dataset = strategy.distribute_datasets_from_function(input_fn)
  with warnings.catch_warnings():
    # A distributed data set has no known length, so Keras warns when the one pass ends.
    warnings.filterwarnings("ignore", message=".*ran out of data")
    result = model.evaluate(dataset, verbose=0, return_dict=True)
  return {"heldout_loss": float(result["loss"]),
          "heldout_pretext_accuracy": float(result["accuracy"]),
          "heldout_images": int(limit) if limit else None}


def train_stage(config: config_lib.Config, the_plan: Plan, stage: stages_lib.Stage,
                backbone: keras.Model, strategy: tf.distribute.Strategy, workdir: str,
                log: Callable[[str], object] = print,
                callbacks: Sequence[keras.callbacks.Callback] = (),
                progress: progress_lib.RunProgress | None = None) -> dict[str, Any]:
  """Trains one stage (resuming from its last epoch checkpoint) and returns its summary.

  `progress`, a `psl_tf.progress.RunProgress`, prints the run-level epoch lines."""
  task, steps = the_plan.task, the_plan.steps_per_epoch
  epochs = the_plan.epochs[stage.index - 1]
  total_steps = epochs * steps
  # Seeded per stage, so a stage's head starts the same whether or not the run was resumed.
  keras.utils.set_random_seed(config.seed * 1000 + stage.index)
  with strategy.scope():
    head = trainer.build_stage_head(backbone, task, stage)
    if config.sync_bn:
      blocks_lib.set_synchronized_batchnorm(head)
    # A task may scale the flag's rate with the batch (SimCLR: lr x batch / 256).
    base_lr = task.learning_rate(config.learning_rate, config.batch_size)
    schedule_steps, start_step = total_steps, 0
    if not config.lr_restart:  # one schedule over the run; this stage continues it
      schedule_steps = sum(the_plan.epochs) * steps
      start_step = sum(the_plan.epochs[:stage.index - 1]) * steps
    schedule = optim.make_schedule(
        config.lr_schedule, base_lr, schedule_steps, config.lr_step_split,
        config.lr_decay, warmup_steps=int(config.warmup_epochs * steps), start_step=start_step)
    optimizer = optim.build_optimizer(config.optimizer, schedule, config.momentum,
                                      weight_decay=config.weight_decay)
    model = trainer.StageModel(
        backbone, task, stage, head,
        weight_decay=0.0 if getattr(optimizer, "handles_weight_decay", False)
        else config.weight_decay,
        frozen_bn=config.frozen_bn, name=f"stage_{stage.index}")
    optimizer = precision.wrap_optimizer(optimizer)  # loss scaling under mixed_float16
    model.compile(optimizer=optimizer)
    optimizer.build(model.trained_variables())
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    seconds_var = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    curve_var = tf.Variable(tf.fill([epochs, 2], np.nan), trainable=False)
  core = {"model": model, "optimizer": optimizer, "epoch": epoch_var}
  checkpoint = tf.train.Checkpoint(**core, training_seconds=seconds_var, epoch_curve=curve_var)
  chief_ckpt_dir = os.path.join(wd.stage_dir(workdir, stage.index), "ckpt")
  ckpt_dir = distribute.writable_dir(chief_ckpt_dir, strategy)
  manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=1)
  # Every worker resumes from the chief's checkpoint: a non-chief's own saves go to a private
  # folder named after its process, which a restarted worker never sees; a worker that
  # started from scratch while the chief resumed would train other weights and other epochs.
  latest = None
  try:
    latest = tf.train.latest_checkpoint(chief_ckpt_dir)
    if latest:
      restore_epoch_checkpoint(latest, core, checkpoint)
  except (tf.errors.OpError, ValueError, AssertionError, KeyError) as e:
    raise guards.CannotContinue(
        f"stage {stage.index}'s epoch checkpoint {latest or chief_ckpt_dir} cannot be read "
        f"({_first_line(e)}): it is damaged; delete {chief_ckpt_dir} to restart stage "
        f"{stage.index} from its first epoch (finished stages are kept)") from e
  if latest:
    log(f"   resuming stage {stage.index} from epoch {int(epoch_var.numpy())} ({latest})")
  initial_epoch = int(epoch_var.numpy())
  log(_stage_header(config, stage, len(the_plan.stages), task, epochs, steps))

  if distribute.is_chief(strategy) and initial_epoch == 0:  # what this stage is fed
    visualize.log_stage_inputs(
        os.path.join(workdir, "logs", f"stage_{stage.index}", "inputs"), task, stage.level,
        the_plan.source, seed=config.seed)
  input_fn = data.make_input_fn(the_plan.source, task.example_fn(stage.level, training=True),
                                config.batch_size, seed=config.seed * 100 + stage.index,
                                training=True, shuffle_buffer=config.shuffle_buffer,
                                steps_per_epoch=steps, first_epoch=initial_epoch,
                                num_epochs=max(epochs, initial_epoch + 1),
                                batch_fn=task.batch_fn(stage.level, training=True))
  dataset = strategy.distribute_datasets_from_function(input_fn)
  epoch_checkpoint = _EpochCheckpoint(manager, epoch_var, seconds_var, curve_var)
  callbacks = [guards.NonFiniteGuard(stage.index, steps),
               epoch_checkpoint,
               keras.callbacks.TensorBoard(
                   distribute.writable_dir(os.path.join(workdir, "logs", f"stage_{stage.index}"),
                                           strategy)),
               *callbacks]
  if progress is not None:
    progress.skip(initial_epoch * steps)
    callbacks.append(progress.callback(stage.index, len(the_plan.stages), epochs, steps))
  start = time.time()
  if initial_epoch < epochs:
    model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
              callbacks=callbacks, shuffle=False,
              verbose=progress_lib.fit_verbose(config.verbose))
  wall_here = time.time() - start
  # Over every process that trained this stage (a checkpoint written before this bookkeeping
  # existed restores 0 seconds and no curve for its epochs).
  wall = epoch_checkpoint.seconds_before + wall_here
  curve = curve_var.numpy()
  losses = [float(l) for l in curve[:, 0] if np.isfinite(l)]
  accuracies = [float(a) for a in curve[:, 1] if np.isfinite(a)]
  heldout = heldout_metrics(config, the_plan, stage, model, strategy)
  if heldout:
    log(f"   stage {stage.index} held-out pretext accuracy "
        f"{100 * heldout['heldout_pretext_accuracy']:.1f} % on {heldout['heldout_images']} "
        f"images (chance {100 * task.chance(stage.level, config.batch_size):.1f} %)")
    warning = guards.small_heldout_warning(stage.index, heldout["heldout_images"])
    if warning:
      log(f"   WARNING: {warning}")
  run_steps = (epochs - initial_epoch) * steps
  summary = {
      "stage": stage.index, "blocks": [stage.first, stage.last],
      "trained_blocks": list(stage.trained_blocks), "level": stage.level,
      "level_description": task.describe_level(stage.level), "epochs": epochs,
      "steps": total_steps, "resumed_from_epoch": initial_epoch,
      "learning_rate": base_lr,
      "learning_rate_first_last": [optim.rate_at(schedule, 0),
                                   optim.rate_at(schedule, total_steps - 1)],
      "final_loss": losses[-1] if losses else None,
      "pretext_accuracy": accuracies[-1] if accuracies else None,
      "epoch_losses": [round(l, 5) for l in losses],
      "chance": task.chance(stage.level, config.batch_size),
      **heldout,
      "wall_time_s": round(wall, 3),
      "images_per_second": (round(run_steps * config.batch_size / wall_here, 2)
                            if run_steps and wall_here > 0 else None),
      **task.level_summary(stage.level),
  }
  _check_finite_backbone(backbone, stage.index)
  if distribute.is_chief(strategy):
    wd.finish_stage(workdir, stage.index, backbone, summary)
  wd.remove_tree(ckpt_dir)
  return summary


def _first_line(error: BaseException) -> str:
  text = str(getattr(error, "message", None) or error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


def _check_finite_backbone(backbone: keras.Model, stage_index: int) -> None:
  """Raises TrainingDiverged if a backbone weight (a BatchNorm statistic, say) is not finite."""
  for variable in backbone.weights:
    if not bool(tf.reduce_all(tf.math.is_finite(variable))):
      raise guards.TrainingDiverged(
          f"training diverged in stage {stage_index}: {variable.path} is not finite at the end "
          "of the stage; its weights were not saved and nothing was exported; lower "
          "--learning_rate and use a new --workdir")


@precision.with_config_precision
def run(config: config_lib.Config, strategy: tf.distribute.Strategy,
        log: Callable[[str], object] = print, the_plan: Plan | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
  """Runs (or resumes) every stage of `config` and exports the backbone.

  Args:
    config: a `psl_tf.config.Config`.
    strategy: a `tf.distribute.Strategy`; every model and variable is built in its scope.
    log: where the one-line messages go.
    the_plan: the result of `plan(config)`, if the caller already checked it.
    callbacks: extra Keras callbacks for every stage's `fit` (after the epoch checkpoint).

  Returns:
    The summary dict also written to `summary.json`.
  """
  the_plan = the_plan or plan(config)
  chief = distribute.is_chief(strategy)
  # The chief holds the work directory for the whole run (re-entrant: `pretrain` took it
  # already); other workers write nothing there and never wait for it.
  with runlock.hold(config.workdir, "psl_tf.train", enabled=chief):
    try:
      return _run(config, strategy, log, the_plan, callbacks, chief)
    except (OSError, tf.errors.OpError) as e:
      if guards.is_disk_full(e):
        raise guards.CannotContinue(guards.disk_full_message(e, config.workdir,
                                                             "training")) from e
      raise


def _run(config: config_lib.Config, strategy: tf.distribute.Strategy,
         log: Callable[[str], object], the_plan: Plan,
         callbacks: Sequence[keras.callbacks.Callback], chief: bool) -> dict[str, Any]:
  """`run` with the work directory held."""
  workdir = config.workdir
  if the_plan.source.skipped:
    log(f"   skipped {the_plan.source.skipped} unreadable image file(s) in {config.dataset}")
  if chief:
    for path in wd.remove_temporary_files(workdir):
      log(f"   removed {path}, left half-written by a killed run")
    the_plan.task.write_artifacts(workdir)
  keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    backbone = models.build_backbone(config.backbone, **config.backbone_kwargs())
    if config.sync_bn:
      blocks_lib.set_synchronized_batchnorm(backbone)
  summary = wd.read_summary(workdir) or {}
  summary.update({"task": config.task, "mode": config.mode, "dataset": config.dataset,
                  "backbone": config.backbone, "image_size": config.image_size,
                  "batch_size": config.batch_size, "replicas": strategy.num_replicas_in_sync,
                  "skipped_images": the_plan.source.skipped})
  summary["precision"] = precision.current()
  summary.setdefault("stages", [])
  missing = wd.stages_missing_weights(workdir)
  if missing:
    k = missing[0]
    raise guards.CannotContinue(
        f"stage {k} is marked finished ({os.path.join(wd.stage_dir(workdir, k), wd.DONE_FILE)})"
        f" but its weights {wd.stage_weights_path(workdir, k)} are missing; restore the file, "
        f"or delete {wd.stage_dir(workdir, k)} and every later stage_<k> folder to train "
        "them again")
  done = set(wd.finished_stages(workdir))
  listed = {s["stage"] for s in summary["stages"]}
  recovered = [wd.read_stage_summary(workdir, index) for index in sorted(done - listed)]
  recovered = [entry for entry in recovered if entry is not None]
  if recovered:  # finished, but killed before summary.json said so
    summary["stages"] = sorted(summary["stages"] + recovered, key=lambda s: s["stage"])
    if chief:
      wd.write_summary(workdir, summary)
  progress = progress_lib.RunProgress(
      {s.index: the_plan.epochs[s.index - 1] * the_plan.steps_per_epoch for s in the_plan.stages},
      config.batch_size, log, config.verbose)
  previous = None  # the last finished stage
  in_memory = None  # the stage whose weights the backbone holds now
  for stage in the_plan.stages:
    if stage.index in done:
      log(f"== stage {stage.index}/{len(the_plan.stages)} already finished; "
          f"using {wd.stage_weights_path(workdir, stage.index)}")
      previous = stage.index
      progress.skip(progress.stage_steps[stage.index])
      continue
    if previous is not None and in_memory != previous:
      wd.load_backbone_weights(backbone, wd.stage_weights_path(workdir, previous))
    stage_summary = train_stage(config, the_plan, stage, backbone, strategy, workdir, log,
                                callbacks, progress)
    summary["stages"] = [s for s in summary["stages"] if s["stage"] != stage.index]
    summary["stages"].append(stage_summary)
    summary["stages"].sort(key=lambda s: s["stage"])
    if chief:
      wd.write_summary(workdir, summary)
      wd.crash_point("stage_finished")
    previous = in_memory = stage.index
  if previous is not None and in_memory != previous:
    wd.load_backbone_weights(backbone, wd.stage_weights_path(workdir, previous))
  if config.export and chief:
    path = os.path.join(workdir, "export")
    # Written next to its place and renamed, so a kill never leaves a half-written export/.
    partial = path + wd.PARTIAL_SUFFIX
    wd.remove_tree(partial)
    export_lib.export_backbone(backbone, partial, config.image_size, config.resize_to)
    wd.crash_point("export_written")
    wd.remove_tree(path)
    os.replace(partial, path)
    summary["export"] = path
    wd.write_summary(workdir, summary)
    log(f"exported the backbone (stage {previous}) to {path}")
  logging.info("run finished: %s", workdir)
  return summary


def check_resume(config: config_lib.Config) -> None:
  """Raises ValueError if `config.workdir` holds a run made with other learning settings.

  The run's flags.txt is read back into a Config and compared setting by setting, except the
  resume-safe ones (`option(..., resume_safe=True)`: verbosity, export, held-out split, cache,
  ...) and the work directory's own name. Flags that are not settings (--strategy, another
  task's options) and settings missing from an older flags.txt (their default) never block a
  resume."""
  old_values = wd.read_flags(config.workdir)
  if old_values is None:
    return
  old = config_lib.from_flags(old_values)
  old_texts, new_texts = config_lib.to_flags(old), config_lib.to_flags(config)
  safe = _resume_safe_names(config)
  changed = sorted(k for k in set(old_texts) | set(new_texts)
                   if k not in safe and old_texts.get(k) != new_texts.get(k))
  if changed:
    diffs = ", ".join(f"--{k}={old_texts.get(k)} -> {new_texts.get(k)}" for k in changed[:4])
    raise ValueError(f"{config.workdir} holds a run with other flags ({diffs}); resume with "
                     f"the same flags (--flagfile={os.path.join(config.workdir, wd.FLAGS_FILE)})"
                     " or pick a new --workdir")


def _resume_safe_names(config: config_lib.Config) -> set[str]:
  """The flags of `config` that may differ between a run and its resumption (and `workdir`,
  whose spelling may)."""
  safe = {f.name for f in config_lib.options_of(config_lib.Config) if f.metadata["resume_safe"]}
  safe |= {name for name, field in config_lib.task_option_fields(config.task_options).items()
           if field.metadata["resume_safe"]}
  return safe | {"workdir"}


def repair_flags(config: config_lib.Config) -> str | None:
  """Replaces a damaged flags.txt in `config.workdir` (one `workdir.check_complete_flags`
  refuses: cut short by a kill or a full disk, or overwritten) with `config`'s flags, the
  user's statement that `config` is the run's. The whole flag lines left in it are checked
  first: one that disagrees with `config` (other than a resume-safe one) is a ConfigError
  naming it, and nothing is changed. The damaged file is kept beside it as
  `flags.txt.damaged`; a work directory another process holds is refused (ConfigError).
  Returns what was done, in one line, or None when flags.txt is missing or whole (then there
  is nothing to repair and the resume check decides)."""
  path = os.path.join(config.workdir, wd.FLAGS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    wd.check_complete_flags(path)
    return None
  except ValueError:
    pass
  new_texts = config_lib.to_flags(config)
  safe = _resume_safe_names(config)
  # What is left to check against: the whole flag lines, and the settings summary.json keeps.
  summary = wd.read_summary(config.workdir)
  left = {k: str(summary[k]) for k in _SUMMARY_SETTINGS if k in summary}
  left.update(wd.surviving_flags(path))
  checked = sorted(k for k in left if k in new_texts and k not in safe)
  changed = [k for k in checked if left[k] != new_texts[k]]
  if changed:
    diffs = ", ".join(f"--{k}={left[k]} -> {new_texts[k]}" for k in changed[:4])
    raise ConfigError(f"{path} is damaged and what is left of the run's flags is not this "
                      f"command line ({diffs}): --repair_flags needs the run's own flags; "
                      "restore it from a copy or pick a new --workdir")
  with contextlib.ExitStack() as stack:  # not while another process uses the run
    _hold_workdir(config, stack)
    tf.io.gfile.copy(path, path + ".damaged", overwrite=True)
    wd.write_flags(config.workdir, new_texts)
  unchecked = len([k for k in new_texts if k not in safe]) - len(checked)
  return (f"{path} was damaged and is rewritten from this command line: {len(checked)} of its "
          f"settings agree with what was left of the run's, {unchecked} could not be checked "
          f"and are taken as given (the damaged file: {path}.damaged)")


# Settings summary.json records with the same text as their flag (others it holds, such as
# `export`, mean something else there).
_SUMMARY_SETTINGS = ("task", "mode", "backbone", "dataset", "image_size", "batch_size")


class ConfigError(ValueError):
  """The run cannot start: a setting, the data or the work directory is wrong (raised before
  anything is trained; the command line reports it in one line, exit code 2)."""


def _hold_workdir(config: config_lib.Config, stack: contextlib.ExitStack[Any]) -> None:
  """Takes the lock of `config.workdir` for this process until `stack` closes (one process
  per work directory, `psl_tf.runlock`; re-entrant); ConfigError naming the other process."""
  try:
    path = runlock.acquire(config.workdir, "psl_tf.train")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  stack.callback(runlock.release, path)


def prepare(config: config_lib.Config, strategy: tf.distribute.Strategy
            ) -> tuple[Any, Any]:
  """Everything before the first stage: checks the work directory (a non-empty folder that
  is not a psl_tf run is refused: a user's folder is never written into nor cleaned up) and
  against the config (a different run there is refused), plans the run against its data and
  task, builds the online probes when `config.online_probes`, and writes flags.txt
  (`config.to_flags(config)`, atomically) on the chief, holding the work directory's lock
  (one that another process holds is refused, naming it). Returns (plan, online probes
  callback or None); raises ConfigError. `pretrain` keeps the lock for the whole run; called
  alone, this gives it back when it returns."""
  with contextlib.ExitStack() as stack:
    return _prepare(config, strategy, stack)


def _prepare(config: config_lib.Config, strategy: tf.distribute.Strategy,
             stack: contextlib.ExitStack[Any]) -> tuple[Any, Any]:
  """`prepare`; the chief's lock of the work directory is held until `stack` closes."""
  chief = distribute.is_chief(strategy)
  try:
    if chief:
      wd.check_new_or_run(config.workdir)
    check_resume(config)
    the_plan = plan(config)
    if config.batch_size % strategy.num_replicas_in_sync:
      raise ValueError(f"--batch_size={config.batch_size} does not split over "
                       f"{strategy.num_replicas_in_sync} replicas")
    probes = None
    if config.online_probes:
      probes = online_probes.for_run(
          the_plan.source, config.dataset, config.data_dir, config.image_size,
          config.resize_to, config.batch_size,
          os.path.join(config.workdir, "logs", "online_probes"), config.seed,
          config.image_check)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if chief:
    _hold_workdir(config, stack)
    try:
      wd.write_flags(config.workdir, config_lib.to_flags(config))
    except (OSError, tf.errors.OpError) as e:
      raise ConfigError(f"cannot write the work directory {config.workdir}: "
                        f"{getattr(e, 'message', None) or e}") from e
  return the_plan, probes


def pretrain(config: config_lib.Config, strategy: tf.distribute.Strategy | None = None,
             log: Callable[[str], object] = print,
             callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
  """Runs (or resumes) the pre-training `config` describes. `python -m psl_tf.train` parses
  its flags into a Config and calls this; nothing else runs a run.

  Checks the work directory (a non-empty folder that is not a psl_tf run, a directory
  another process uses, or a different run there is refused), holds it for this process
  until the run returns or raises (`psl_tf.runlock`, on the chief), writes
  its flags.txt (so `psl_tf.evaluate` and `psl_tf.export` can read the run back, and
  `--flagfile=<workdir>/flags.txt` repeats it), runs every stage (with online probes when
  `config.online_probes`) and exports the backbone when `config.export`. Returns the summary
  (summary.json).

  Args:
    config: a `psl_tf.config.Config`.
    strategy: a `tf.distribute.Strategy` (default: `psl_tf.distribute.make_strategy("auto")`).
    log: where the one-line messages go.
    callbacks: extra Keras callbacks for every stage's `fit`.

  Raises:
    ConfigError: the run cannot start (nothing was trained).
    psl_tf.guards.TrainingDiverged: a loss, gradient or weight became non-finite.
    psl_tf.guards.CannotContinue: the disk filled up, an epoch checkpoint is damaged or a
      finished stage's weights are missing (the message says what to do).
  """
  strategy = strategy or distribute.make_strategy("auto")
  with contextlib.ExitStack() as stack:  # the chief holds the work directory until the end
    the_plan, probes = _prepare(config, strategy, stack)
    extra = [probes] if probes is not None else []
    summary = run(config, strategy, log=log, the_plan=the_plan, callbacks=[*extra, *callbacks])
    if probes is not None and distribute.is_chief(strategy):
      summary = online_probes.merge_history(summary, probes.history)
      wd.write_summary(config.workdir, summary)
  return summary

