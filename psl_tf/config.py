"""The typed description of one pre-training run, and the one path between it and flags.

Every setting is declared once, as a dataclass field made by `psl_tf.options.option(...)`: its
type, default, help text, allowed choices (taken from the module that defines them:
`stages.MODES`, `optim.SCHEDULES`, `precision.PRECISIONS`, ...) or numeric range, and whether
a resumed run may change it. From these declarations

* `psl_tf.cli.flagdefs` generates the command-line flags of `python -m psl_tf.train`
  (`Config`'s fields, and each task's `Options` as `--<prefix>_<option>`);
* `from_flags` turns resolved flags ({name: text}, as `flags.txt` stores them and as the
  command line gives them) into a `Config` with every value typed and checked;
* `to_flags` turns a `Config` back into the same texts, so `flags.txt` -> `Config` -> flags
  round-trips exactly (tests/config_test.py checks it for every task).

The defaults are the offline demo's (small ResNet, 32 px, Adam, 30 epochs per stage: a run
that learns in minutes on a CPU); the measured-best and the paper's settings are recipes
(`psl_tf/flags/*.flags`, `psl_tf.recipes`).
"""

import dataclasses
import re
from typing import Any, Mapping

from psl_tf import data
from psl_tf import models
from psl_tf import optim
from psl_tf import precision
from psl_tf import stages
from psl_tf import tasks
from psl_tf import trainer
# The option machinery, re-exported: `config.option`, `config.options_of`, ... keep working.
from psl_tf.options import (INT_MAX, KINDS, build_options, check_value, coerce, flag_names,  # pylint: disable=unused-import
                            from_text, is_option, option, options_of, task_option_fields,
                            to_text)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a pre-training run needs.

  `task_options` is the task's own `Options` dataclass (e.g. `JigsawTask.Options`); a dict of
  option values (typed, or texts as in flags.txt) is converted to it and checked.
  """
  # What to learn.
  task: str = option("rotation", f"Pretext task ladder: {', '.join(sorted(tasks.TASKS))}.")
  mode: str = option("psl", "psl: progressive stage-wise; sl: stage-wise on the hardest level "
                     "only; psl_f: psl with full gradients; e2e: one end-to-end stage; greedy: "
                     "non-overlapping stages B1-B2/B3-B4/B5.",
                     choices=stages.MODES)
  stages: str = option("", "Block ranges of the stages, e.g. 1-3,2-4,3-5 (empty: the mode's "
                       "default).")
  levels: str = option("", "Task level of each stage, e.g. 1,2,3 (empty: stage k on level k; "
                       "the top level in sl and e2e).")
  task_options: object = None
  # Data.
  dataset: str = option("demo", "demo (offline sample photos), folder:PATH (class sub-folders "
                        "give labels) or a TFDS name such as cifar10.")
  data_dir: str | None = option(None, "TFDS data directory.", kind="str")
  train_split: str = option("train", "Split to pre-train on.")
  heldout_split: str = option("auto", "Split each stage's pretext accuracy is measured on "
                              "after training (auto: test or validation when the data set has "
                              "one; none: skip).", resume_safe=True)
  heldout_examples: int = option(10_000, "At most this many held-out images per stage (0: the "
                                 "whole split).", range=(0, INT_MAX), resume_safe=True)
  image_size: int = option(32, "Side of the square crop the backbone sees.", range=(8, 1024))
  resize: int = option(0, "Shorter side before cropping (0: image_size * 256/224).",
                       range=(0, 4096))
  image_check: str = option("full", "How folder images are checked before training; "
                            "unreadable ones are skipped and counted.",
                            choices=data.IMAGE_CHECKS)
  shuffle_buffer: int = option(10_000, "Shuffle buffer, in images.", range=(1, 10**8))
  cache: str = option("auto", "Decode the training images once and keep them in memory as "
                      "uint8 (auto: when the decoded split is under 2 GiB). Same images, same "
                      "order.", choices=data.CACHE_MODES, resume_safe=True)
  # Model.
  backbone: str = option("cifar_resnet", f"Backbone: {', '.join(models.BACKBONES)}.")
  depth: int = option(10, "cifar_resnet depth: 10, 18, 34 or 50.", range=(1, 1000))
  width: int = option(16, "cifar_resnet width of b1/b2 (doubled per block after).",
                      range=(1, 4096))
  filters_factor: int = option(4, "revnet50 width multiplier.", range=(1, 64))
  recompute: bool = option(False, "revnet50: recompute activations in the backward pass.")
  head_hidden: int = option(512, "Hidden width of the task heads (0: linear head).",
                            range=(0, 65536))
  head_grid: int = option(1, "The task heads average-pool the stage's last map to a G x G "
                          "grid of cells and flatten it (1: global average pooling, the "
                          "default; 4 keeps where a feature is).", range=(1, 64))
  frozen_bn: str = option("inference", "BatchNorm of frozen blocks: inference (moving "
                          "statistics, kept) or batch_stats (batch statistics, moving averages "
                          "keep updating).", choices=trainer.FROZEN_BN_MODES)
  sync_bn: bool = option(False, "BatchNorm statistics over all replicas (cross-replica BN) "
                         "instead of per replica.")
  precision: str = option("float32", "Keras mixed-precision policy: variables, BatchNorm "
                          "statistics, logits and losses stay float32; mixed_float16 adds "
                          "dynamic loss scaling; auto picks mixed_bfloat16 on TPUs and CPUs "
                          "with AVX512_BF16/AMX, else float32.",
                          choices=precision.PRECISIONS)
  # Optimisation, per stage.
  batch_size: int = option(64, "Global batch size (over all replicas).", range=(1, 65536))
  epochs: tuple = option((30,), "Epochs per stage: one value, or one per stage.")
  steps_per_epoch: int = option(0, "Steps per epoch (0: images // batch_size).",
                                range=(0, 10**9))
  optimizer: str = option("adam", "Optimizer, rebuilt for every stage (lars applies "
                          "--weight_decay itself).", choices=optim.OPTIMIZERS)
  learning_rate: float = option(0.003, "Peak learning rate of every stage.",
                                range=(0.0, 100.0, True))
  momentum: float = option(0.9, "SGD momentum.", range=(0.0, 1.0))
  weight_decay: float = option(1e-4, "L2 weight decay on kernels (not biases, not BN).",
                               range=(0.0, 1.0))
  lr_schedule: str = option("cosine", "Learning-rate schedule within a stage.",
                            choices=optim.SCHEDULES)
  lr_step_split: str = option("20,20,10,10", "Step schedule: relative lengths of the constant "
                              "pieces (the paper's 20/20/10/10 epochs).")
  lr_decay: float = option(0.1, "Step schedule: factor between pieces.", range=(0.0, 1.0, True))
  warmup_epochs: float = option(0.0, "Cosine schedule: linear warm-up epochs.",
                                range=(0.0, 10**6))
  lr_restart: bool = option(True, "Restart the schedule (and its warm-up) in every stage, as "
                            "the paper's rotation and jigsaw stages do; false: one schedule "
                            "over all the run's steps, each stage continuing where the stage "
                            "below stopped (the paper's SimCLR: cosine decay without restart).")
  # Running.
  seed: int = option(0, "Seed of initialisation, shuffling and augmentation.",
                     range=(0, INT_MAX))
  workdir: str = option("", "Work directory (empty: runs/<task>_<mode>_<dataset>).")
  export: bool = option(True, "Write a SavedModel of the backbone to <workdir>/export.",
                        resume_safe=True)
  online_probes: bool = option(
      False, "Train stop-gradient linear probes on every computed block alongside the pretext "
      "task (labelled data only); per-epoch accuracy to TensorBoard (logs/online_probes) and "
      "summary.json. They never touch the backbone.", resume_safe=True)
  verbose: int = option(1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per "
                        "epoch.", range=(0, 2), resume_safe=True)

  def __post_init__(self) -> None:
    for field in options_of(Config):
      object.__setattr__(self, field.name, coerce(field, getattr(self, field.name)))
    if not self.epochs or min(self.epochs) < 1:
      raise ValueError("--epochs must be at least 1 per stage")
    task_cls = tasks.get_task_class(self.task)
    object.__setattr__(self, "task_options", build_options(
        task_cls.Options, self.task_options, owner=self.task))
    if not self.workdir:
      object.__setattr__(self, "workdir", "runs/" + re.sub(
          r"[^A-Za-z0-9_.-]+", "_", f"{self.task}_{self.mode}_{self.dataset}"))

  @property
  def resize_to(self) -> int:
    """Shorter side before cropping: given, or 256/224 of the crop as in the paper."""
    return self.resize or int(round(self.image_size * 256 / 224))

  def stage_epochs(self, num_stages: int) -> list[int]:
    """Epochs of each stage: one value for all, or one per stage."""
    if len(self.epochs) == 1:
      return list(self.epochs) * num_stages
    if len(self.epochs) != num_stages:
      raise ValueError(f"--epochs gives {len(self.epochs)} values for {num_stages} stages; "
                       "give one value or one per stage")
    return list(self.epochs)

  def backbone_kwargs(self) -> dict[str, Any]:
    """Keyword arguments of the chosen backbone's builder (spatial size left open, so the
    same backbone takes whole images, jigsaw tiles and probe crops)."""
    if self.backbone == "cifar_resnet":
      return {"depth": self.depth, "width": self.width}
    if self.backbone == "revnet50":
      return {"filters_factor": self.filters_factor, "recompute": self.recompute}
    return {}


def from_flags(values: Mapping[str, str]) -> Config:
  """The one way from flags to a Config: {flag name: text} (a run's flags.txt as
  `psl_tf.workdir.read_flags` returns it, or the command line's resolved flags) -> Config.

  Every value is typed and checked (ValueError in one line, naming the flag). Flags that are
  not the run's settings (--strategy, another task's options, ...) are ignored; settings
  missing from `values` keep their defaults.
  """
  kwargs = {f.name: from_text(f, values[f.name]) for f in options_of(Config) if f.name in values}
  task_cls = tasks.get_task_class(kwargs.get("task", Config.task))
  options_cls = task_cls.Options
  fields = {f.name: f for f in options_of(options_cls)}
  options = {name: from_text(fields[name], values[flag], flag)
             for name, flag in flag_names(options_cls).items() if flag in values}
  return Config(task_options=options, **kwargs)


def to_flags(config: Config) -> dict[str, str]:
  """{flag name: text} of a Config: what `from_flags` reads back into an equal Config."""
  values = {f.name: to_text(f, getattr(config, f.name)) for f in options_of(Config)}
  options = config.task_options
  names = flag_names(type(options))
  values.update({names[f.name]: to_text(f, getattr(options, f.name))
                 for f in options_of(type(options))})
  return {name: text for name, text in values.items() if text is not None}
