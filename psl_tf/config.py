"""The typed description of one pre-training run, and the one path between it and flags.

Every setting is declared once, as a dataclass field made by `option(...)`: its type, default,
help text, allowed choices or numeric range, and whether a resumed run may change it. From
these declarations

* `psl_tf.cli.flagdefs` generates the command-line flags of `python -m psl_tf.train`
  (`Config`'s fields, and each task's `Options` as `--<prefix>_<option>`);
* `from_flags` turns resolved flags ({name: text}, as `flags.txt` stores them and as the
  command line gives them) into a `Config` with every value typed and checked;
* `to_flags` turns a `Config` back into the same texts, so `flags.txt` -> `Config` -> flags
  round-trips exactly (tests/config_test.py checks it for every task).

The defaults are the offline demo's (small ResNet, 32 px, Adam, 30 epochs per stage: a run
that learns in minutes on a CPU); the paper's settings are in `flags/*.flags`.
"""

import dataclasses
import math
import re
from typing import Any, Mapping

# How an option is written in flags.txt and on the command line.
KINDS = ("str", "int", "float", "bool", "enum", "int_list", "str_list")
_INT_MAX = 2**31 - 1


def option(default, help, *, choices=None, range=None, kind=None, resume_safe=False):  # pylint: disable=redefined-builtin
  """A dataclass field that is also a flag.

  Args:
    default: the default value (a tuple for list options).
    help: the flag's help text.
    choices: allowed values of a string option (an enum flag).
    range: (low, high) or (low, high, low_is_open) of a numeric option; every numeric
      option must have one, so a value like --learning_rate=-1 is refused in one line.
    kind: one of KINDS; inferred from the default when omitted.
    resume_safe: a resumed run may change it (it does not change what is learned).
  """
  if kind is None:
    kind = ("enum" if choices else "bool" if isinstance(default, bool) else
            "int" if isinstance(default, int) else "float" if isinstance(default, float) else
            "int_list" if isinstance(default, tuple) else "str")
  if kind not in KINDS:
    raise ValueError(f"unknown option kind {kind!r}")
  if kind in ("int", "float") and range is None:
    raise ValueError(f"numeric option with default {default!r} needs a range")
  if range is not None and len(range) == 2:
    range = (*range, False)
  metadata = {"help": help, "kind": kind, "choices": tuple(choices) if choices else None,
              "range": range, "resume_safe": resume_safe}
  return dataclasses.field(default=default, metadata=metadata)


def is_option(field):
  return "kind" in field.metadata


def to_text(field, value):
  """The flags.txt text of `value` for an option field (None for an unset value)."""
  if value is None:
    return None
  kind = field.metadata["kind"]
  if kind == "bool":
    return "true" if value else "false"
  if kind in ("int_list", "str_list"):
    return ",".join(str(v) for v in value)
  if kind == "float":
    return str(float(value))
  return str(value)


def from_text(field, text, flag=None):
  """The typed value of an option field from its text; ValueError names the flag."""
  flag = flag or field.name
  kind = field.metadata["kind"]
  if text is None or (text in ("None", "") and field.default is None):
    return None
  try:
    if kind == "bool":
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError("not a boolean")
      value = text.lower() in ("true", "1")
    elif kind == "int":
      value = int(text)
    elif kind == "float":
      value = float(text)
    elif kind == "int_list":
      try:
        value = tuple(int(v) for v in text.split(",") if v.strip())
      except ValueError:
        raise ValueError(f"--{flag} takes whole numbers separated by commas, got {text}") from None
    elif kind == "str_list":
      value = tuple(v for v in text.split(",") if v)
    else:
      value = text
  except ValueError as e:
    if str(e).startswith("--"):
      raise
    raise ValueError(f"--{flag}={text} is not a valid {kind.replace('_', ' ')}") from None
  check_value(field, value, flag)
  return value


def coerce(field, value, flag=None):
  """`value` (typed, or a text as in flags.txt) as the field's type, checked."""
  if isinstance(value, str) and field.metadata["kind"] not in ("str", "enum"):
    return from_text(field, value, flag)
  kind = field.metadata["kind"]
  if value is not None:
    if kind == "int_list":
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(f"--{flag or field.name} takes whole numbers, got "
                         f"{','.join(map(str, value))}") from None
    elif kind == "str_list":
      value = tuple(str(v) for v in value)
    elif kind == "float":
      value = float(value)
    elif kind == "int":
      if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"--{flag or field.name}={value} is not a whole number")
      value = int(value)
    elif kind == "bool":
      value = bool(value)
  check_value(field, value, flag)
  return value


def check_value(field, value, flag=None):
  """Raises ValueError, in one line, for a value outside the field's choices or range."""
  flag = flag or field.name
  choices, bounds = field.metadata["choices"], field.metadata["range"]
  if value is None:
    return
  if choices and value not in choices:
    raise ValueError(f"--{flag}={value} is not one of {', '.join(choices)}")
  if bounds:
    low, high, low_open = bounds
    bad = not math.isfinite(value) or value > high or value < low or (low_open and value == low)
    if bad:
      interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
      raise ValueError(f"--{flag}={value} is out of range: it must be in {interval}")


def options_of(cls):
  """The option fields of a dataclass, in declaration order."""
  return [f for f in dataclasses.fields(cls) if is_option(f)]


def build_options(cls, values=None, owner="task", **overrides):
  """An instance of the options dataclass `cls` from an instance, a dict and/or keywords.

  Values may be typed or texts (as in flags.txt); each is converted and checked. Unknown
  names are refused, naming the known ones."""
  if isinstance(values, cls):
    values = dataclasses.asdict(values)
  values = {**(values or {}), **overrides}
  fields = {f.name: f for f in options_of(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"{owner} got unknown options {unknown}; known: {', '.join(fields)}")
  prefixes = flag_names(cls)
  return cls(**{name: coerce(fields[name], value, prefixes[name])
                for name, value in values.items()})


def flag_names(cls):
  """{field name: flag name} of an options dataclass: `<prefix>_<name>`, where the prefix is
  the `flag_prefix` of the class that declares the field (so options a task inherits from a
  shared base, like the contrastive ones, keep the base's flags)."""
  names = {}
  for field in options_of(cls):
    prefix = ""
    for klass in reversed(cls.__mro__):
      if field.name in klass.__dict__.get("__annotations__", {}):
        prefix = klass.__dict__.get("flag_prefix", prefix)
        break
    names[field.name] = f"{prefix}_{field.name}" if prefix else field.name
  return names


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a pre-training run needs.

  `task_options` is the task's own `Options` dataclass (e.g. `JigsawTask.Options`); a dict of
  option values (typed, or texts as in flags.txt) is converted to it and checked.
  """
  # What to learn.
  task: str = option("rotation", "Pretext task ladder: rotation, jigsaw, simclr, mocov2.")
  mode: str = option("psl", "psl: progressive stage-wise; sl: stage-wise on the hardest level "
                     "only; psl_f: psl with full gradients; e2e: one end-to-end stage; greedy: "
                     "non-overlapping stages B1-B2/B3-B4/B5.",
                     choices=("psl", "sl", "psl_f", "e2e", "greedy"))
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
                                 "whole split).", range=(0, _INT_MAX), resume_safe=True)
  image_size: int = option(32, "Side of the square crop the backbone sees.", range=(8, 1024))
  resize: int = option(0, "Shorter side before cropping (0: image_size * 256/224).",
                       range=(0, 4096))
  image_check: str = option("full", "How folder images are checked before training; "
                            "unreadable ones are skipped and counted.",
                            choices=("full", "header", "none"))
  shuffle_buffer: int = option(10_000, "Shuffle buffer, in images.", range=(1, 10**8))
  cache: str = option("auto", "Decode the training images once and keep them in memory as "
                      "uint8 (auto: when the decoded split is under 2 GiB). Same images, same "
                      "order.", choices=("auto", "always", "never"), resume_safe=True)
  # Model.
  backbone: str = option("cifar_resnet", "resnet50, cifar_resnet or revnet50.")
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
                          "keep updating).", choices=("inference", "batch_stats"))
  sync_bn: bool = option(False, "BatchNorm statistics over all replicas (cross-replica BN) "
                         "instead of per replica.")
  precision: str = option("float32", "Keras mixed-precision policy: variables, BatchNorm "
                          "statistics, logits and losses stay float32; mixed_float16 adds "
                          "dynamic loss scaling; auto picks mixed_bfloat16 on TPUs and CPUs "
                          "with AVX512_BF16/AMX, else float32.",
                          choices=("float32", "mixed_bfloat16", "mixed_float16", "auto"))
  # Optimisation, per stage.
  batch_size: int = option(64, "Global batch size (over all replicas).", range=(1, 65536))
  epochs: tuple = option((30,), "Epochs per stage: one value, or one per stage.")
  steps_per_epoch: int = option(0, "Steps per epoch (0: images // batch_size).",
                                range=(0, 10**9))
  optimizer: str = option("adam", "Optimizer, rebuilt for every stage (lars applies "
                          "--weight_decay itself).", choices=("sgd", "adam", "lars"))
  learning_rate: float = option(0.003, "Peak learning rate of every stage.",
                                range=(0.0, 100.0, True))
  momentum: float = option(0.9, "SGD momentum.", range=(0.0, 1.0))
  weight_decay: float = option(1e-4, "L2 weight decay on kernels (not biases, not BN).",
                               range=(0.0, 1.0))
  lr_schedule: str = option("cosine", "Learning-rate schedule within a stage.",
                            choices=("step", "cosine", "constant"))
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
                     range=(0, _INT_MAX))
  workdir: str = option("", "Work directory (empty: runs/<task>_<mode>_<dataset>).")
  export: bool = option(True, "Write a SavedModel of the backbone to <workdir>/export.",
                        resume_safe=True)
  verbose: int = option(1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per "
                        "epoch.", range=(0, 2), resume_safe=True)

  def __post_init__(self) -> None:
    from psl_tf import tasks  # pylint: disable=g-import-not-at-top  (tasks import TensorFlow)
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
  from psl_tf import tasks  # pylint: disable=g-import-not-at-top
  kwargs = {f.name: from_text(f, values[f.name]) for f in options_of(Config) if f.name in values}
  task_cls = tasks.get_task_class(kwargs.get("task", Config.task))
  options_cls = task_cls.Options
  fields = {f.name: f for f in options_of(options_cls)}
  options = {name: from_text(fields[name], values[flag], flag)
             for name, flag in flag_names(options_cls).items() if flag in values}
  return Config(task_options=options, **kwargs)


def task_option_fields(options):
  """{flag name: field} of a task's options instance (or class)."""
  cls = options if isinstance(options, type) else type(options)
  fields = {f.name: f for f in options_of(cls)}
  return {flag: fields[name] for name, flag in flag_names(cls).items()}


def to_flags(config: Config) -> dict[str, str]:
  """{flag name: text} of a Config: what `from_flags` reads back into an equal Config."""
  values = {f.name: to_text(f, getattr(config, f.name)) for f in options_of(Config)}
  options = config.task_options
  names = flag_names(type(options))
  values.update({names[f.name]: to_text(f, getattr(options, f.name))
                 for f in options_of(type(options))})
  return {name: text for name, text in values.items() if text is not None}
