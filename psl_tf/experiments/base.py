"""Experiments as code: a base recipe, rows as typed overrides, seeds; a run's identity.

An `Experiment` is one table of the campaign: a task, the flags every row adds to the base
recipe (`COMMON_TRAIN_FLAGS` and the task's `task_flags`), the rows (`Row`: one of `ROWS`, with
its own overrides when the rows of a pair differ, e.g. PSL's stages on one schedule against
e2e), the seeds planned, and the readable label (`tag`) its runs' directories carry
(`<row><tag>_s<seed>`, as the campaign has always named them). `config_of` turns an
experiment's row and seed into the `psl_tf.Config` its training run gets; `run_id` hashes that
config with everything that does not change what is learnt left out (work directory, seed, the
data folder's location, resume-safe options), so a stored record is recognised by what it ran,
and a record under an experiment's label that ran something else is an error, never a merge.

Nothing here imports TensorFlow except `config_of` / `run_id` (through `psl_tf.config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from psl_tf.experiments import costs

if TYPE_CHECKING:
  from psl_tf.config import Config

MODES = ("psl", "sl", "psl_f", "e2e", "greedy")
TASKS = ("rotation", "jigsaw", "simclr", "mocov2")
CONTRASTIVE = ("simclr", "mocov2")
RANDOM = "random"
# row -> (training mode, protocol); the tables list rows in this order.
ROWS: dict[str, tuple[str | None, str]] = {
    "psl": ("psl", "equal"), "sl": ("sl", "equal"), "psl_f": ("psl_f", "equal"),
    "e2e": ("e2e", "equal"), "greedy": ("greedy", "equal"),
    "psl_paper": ("psl", "paper"), "e2e_matched": ("e2e", "matched"),
    "e2e_at_psl": ("e2e", "matched_equal"),
    RANDOM: (None, "none")}
BLOCKS = ("b1", "b2", "b3", "b4", "b5")
STAGES_PER_MODE: dict[str | None, int] = {"psl": 3, "sl": 3, "psl_f": 3, "greedy": 3,
                                          "e2e": 1, None: 1}

# Budgets for CIFAR-10-sized images on a 2-core CPU.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: the pipeline end to end (tests).
    "tiny": {"depth": 10, "width": 8, "image_size": 32, "batch_size": 16, "stage_epochs": 1,
             "steps_per_epoch": 2, "probe_epochs": 2, "probe_batch_size": 16,
             "probe_learning_rate": 0.05, "probe_inputs": "features"},
    # The first version's budget: 200 steps per stage, probes on 38,400 augmented images.
    "small": {"depth": 10, "width": 16, "image_size": 32, "batch_size": 128,
              "stage_epochs": 2, "steps_per_epoch": 100, "probe_epochs": 2,
              "probe_steps": 150, "probe_batch_size": 128, "probe_learning_rate": 0.05,
              "probe_inputs": "images"},
    # The campaign: e2e sees 15 passes over CIFAR-10 train (5 per stage for three-stage rows),
    # probes train on the pooled features of all 50,000 train images until they plateau.
    # Each block's probe weight decay is chosen on 5,000 held-out training images.
    "cifar10": {"depth": 10, "width": 16, "image_size": 32, "batch_size": 128,
                "stage_epochs": 5, "steps_per_epoch": 390, "probe_epochs": 15,
                "probe_batch_size": 256, "probe_learning_rate": 0.01,
                "probe_inputs": "features", "probe_weight_decays": "5e-4,5e-3,5e-2,5e-1"},
}
# How a run is probed; a stored record probed differently is probed again (its weights kept).
PROBE_SETTINGS = ("probe_epochs", "probe_steps", "probe_batch_size", "probe_learning_rate",
                  "probe_inputs", "probe_weight_decays")
SETTINGS = ("depth", "width", "image_size", "batch_size", "stage_epochs", "steps_per_epoch",
            *PROBE_SETTINGS)
ARCH = ("depth", "width", "image_size")

# Pre-training settings shared by every row (the CIFAR-10 flagfiles' optimiser). Every learning
# flag is explicit, so a later change of the command line's defaults (they are the demo's) cannot
# change what a campaign run started from a newer commit learns.
COMMON_TRAIN_FLAGS = ("--backbone=cifar_resnet", "--optimizer=sgd", "--learning_rate=0.1",
                      "--momentum=0.9", "--weight_decay=5e-4", "--lr_schedule=step",
                      "--lr_step_split=20,20,10,10", "--lr_decay=0.1", "--warmup_epochs=0",
                      "--head_hidden=512", "--frozen_bn=inference", "--precision=float32",
                      "--image_check=none", "--export=false", "--verbose=2")


def task_flags(task: str) -> list[str]:
  """Task settings for 32 px images that keep every task's step cost close to rotation's."""
  if task == "jigsaw":
    # The tiles come from the 32 px image itself (cell 11, tile 9 px: the paper's geometry
    # scaled by 32/224), so nine tiles cost about one 32 px image. The paper's 500/1000/2000
    # classes stayed at chance for two e2e epochs with global heads and the preset's steps
    # (grid heads on cosine learn them: experiment jigsaw_perms2000); 50/100/200 (prefixes of
    # the same greedy maximal-Hamming sequence) keep the ladder's shape.
    return ["--jigsaw_sizes=50,100,200"]
  if task in CONTRASTIVE:
    # The contrastive recipe: the rotation campaign's winning schedule (one cosine decay over
    # the whole run, PSL's stages continuing it instead of restarting) with the CIFAR choices
    # of SimCLR (colour strength 0.5, temperature 0.5) and MoCo v2 (crop scale 0.2,
    # temperature 0.2, queue 4,096, key momentum 0.99); global pooling in the projection head
    # (two random crops share no grid cells, so the rotation's 4x4 grid head does not apply).
    common = ["--lr_schedule=cosine", "--lr_restart=false", "--contrastive_color_strength=0.5"]
    if task == "simclr":
      return common + ["--simclr_lr_scaling=none", "--simclr_temperature=0.5"]
    return common + ["--contrastive_crop_min_scale=0.2", "--mocov2_temperature=0.2",
                     "--mocov2_queue_size=4096", "--mocov2_key_momentum=0.99"]
  return []


def as_flags(overrides: Mapping[str, Any]) -> list[str]:
  """`--name=value` texts of overrides, in their order (booleans as true/false; a value of
  None gives a bare `--name`)."""
  def text(value: Any) -> str:
    if value is None:
      return ""
    if isinstance(value, bool):
      return "true" if value else "false"
    if isinstance(value, (list, tuple)):
      return ",".join(str(v) for v in value)
    return str(value)
  return [f"--{name}" + ("" if value is None else f"={text(value)}")
          for name, value in overrides.items()]


def extra_tag(extra: Sequence[str]) -> str:
  """The run-name label of a variant made by the extra training flags `extra` ('' for none):
  the flags' letters and digits, e.g. ["--head_grid=4"] -> "_headgrid4"."""
  return "_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", e) for e in extra) if extra else ""


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of an experiment: a row of `ROWS` (its training mode and budget protocol) and the
  flags it adds to its experiment's (`overrides`, {flag name: value}, in order)."""
  name: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    if self.name not in ROWS or self.name == RANDOM:
      raise ValueError(f"unknown row {self.name!r}; known: "
                       f"{', '.join(r for r in ROWS if r != RANDOM)}")

  @property
  def mode(self) -> str:
    return str(ROWS[self.name][0])

  @property
  def protocol(self) -> str:
    return ROWS[self.name][1]


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One table of a campaign.

  Attributes:
    name: how the campaign and the answer refer to it (e.g. "rotation_headgrid4").
    task: the pretext task.
    overrides: flags every row adds to the base recipe, {flag name: value} in order.
    rows: the rows, each with its own overrides (`Row`).
    seeds: the seeds the campaign plans for it.
    tag: the label of its runs' directories and tables (`<row><tag>_s<seed>`,
      `results<tag>.md`); by default the flags' letters and digits (`extra_tag`).
    base: the experiment its rows are compared with, row by row (None: the task's default
      experiment; ignored by the default experiment itself).
    settings: preset settings it changes (e.g. {"width": 32}: another backbone, which gets its
      own untrained floor).
    finetune: its runs are also fine-tuned on 1 % and 10 % of the labels.
  """
  name: str
  task: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  rows: tuple[Row, ...] = ()
  seeds: tuple[int, ...] = (0,)
  tag: str | None = None
  base: str | None = None
  settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finetune: bool = False

  def __post_init__(self) -> None:
    if self.task not in TASKS:
      raise ValueError(f"experiment {self.name}: unknown task {self.task!r}")
    if self.tag is None:
      object.__setattr__(self, "tag", extra_tag(self.extra))
    names = [r.name for r in self.rows]
    if len(set(names)) != len(names):
      raise ValueError(f"experiment {self.name}: a row is listed twice")

  @property
  def label(self) -> str:
    """The tag as a str (never None once built)."""
    return self.tag or ""

  def row(self, name: str) -> Row:
    """The experiment's row `name` (a row it does not list trains with no overrides of its
    own, so a campaign can add any row of `ROWS` to an experiment)."""
    for row in self.rows:
      if row.name == name:
        return row
    return Row(name)

  def row_flags(self, name: str) -> list[str]:
    """The flags row `name` adds to the base recipe: the experiment's, then the row's."""
    return as_flags(self.overrides) + as_flags(self.row(name).overrides)

  @property
  def extra(self) -> list[str]:
    """The flags every row of the experiment adds, in order (its description in the tables:
    a flag only some rows add, such as PSL's schedule without restarts against e2e's, is the
    row's own)."""
    flags = self.row_flags(self.rows[0].name) if self.rows else as_flags(self.overrides)
    return [f for f in flags if all(f in self.row_flags(r.name) for r in self.rows)]


def resolve_settings(preset: str, experiment: Experiment | None = None,
                     given: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The run settings (`SETTINGS`): the preset's, then the experiment's, then those `given`
  explicitly (None values are not given)."""
  settings: dict[str, Any] = {k: PRESETS[preset].get(k) for k in SETTINGS}
  if experiment is not None:
    settings.update(experiment.settings)
  settings.update({k: v for k, v in (given or {}).items() if v is not None})
  return settings


def arch_suffix(preset: str, settings: Mapping[str, Any]) -> str:
  """'' for the preset's backbone and image size, else e.g. '_d10_w32_32px'."""
  if all(settings[k] == PRESETS[preset][k] for k in ARCH):
    return ""
  return f"_d{settings['depth']}_w{settings['width']}_{settings['image_size']}px"


def run_name(experiment: Experiment, row: str, seed: int, preset: str,
             settings: Mapping[str, Any]) -> str:
  """The readable label of a run: its directory under the work root and the results.

  The untrained network is the same for every variant of one backbone (an experiment changes
  only training); another width, depth or image size is another network."""
  if row == RANDOM:
    return f"{row}{arch_suffix(preset, settings)}_s{seed}"
  return f"{row}{experiment.label}_s{seed}"


def row_epochs(experiment: Experiment, row: str, settings: Mapping[str, Any],
               flops: Callable[[], Sequence[int]]) -> int:
  """Epochs per stage of a row by its protocol (`costs.epochs_of`)."""
  mode, protocol = ROWS[row]
  return costs.epochs_of(str(mode), protocol, settings["stage_epochs"], flops)


def stage_epochs(experiment: Experiment, row: str, settings: Mapping[str, Any],
                 flops: Callable[[], Sequence[int]]) -> list[int]:
  """Epochs of each stage of a row: the row's rule, unless the row's flags give `epochs`
  (e.g. 3,5,7 against psl's 5,5,5: the same images, spent differently; the last one wins)."""
  count = STAGES_PER_MODE[ROWS[row][0]]
  given = [e.split("=", 1)[1] for e in experiment.row_flags(row) if e.startswith("--epochs=")]
  if not given:
    return [row_epochs(experiment, row, settings, flops)] * count
  return costs.per_stage_epochs(0, count, given[-1])


def train_flags(experiment: Experiment, row: str, seed: int, data: str, workdir: str,
                settings: Mapping[str, Any], flops: Callable[[], Sequence[int]]) -> list[str]:
  """The `psl_tf.train` flags of a trained row's run, in the campaign's order: the run's place
  and budget, the base recipe, the task's settings, then the experiment's and the row's
  overrides (the last of a repeated flag wins)."""
  mode = ROWS[row][0]
  if mode is None:
    raise ValueError("the untrained row has no training flags")
  s = settings
  return [f"--task={experiment.task}", f"--mode={mode}", f"--dataset=folder:{data}",
          f"--depth={s['depth']}", f"--width={s['width']}", f"--image_size={s['image_size']}",
          f"--batch_size={s['batch_size']}",
          f"--epochs={row_epochs(experiment, row, settings, flops)}",
          f"--steps_per_epoch={s['steps_per_epoch']}", f"--seed={seed}",
          f"--workdir={workdir}", *COMMON_TRAIN_FLAGS, *task_flags(experiment.task),
          *experiment.row_flags(row)]


def flag_values(flags: Sequence[str]) -> dict[str, str]:
  """{name: text} of `--name=text` flags (the last of a repeated flag wins, as on the command
  line); other arguments are ignored."""
  values = {}
  for flag in flags:
    if flag.startswith("--") and "=" in flag:
      name, text = flag[2:].split("=", 1)
      values[name] = text
  return values


def config_of(experiment: Experiment, row: str, seed: int, data: str, workdir: str,
              settings: Mapping[str, Any], flops: Callable[[], Sequence[int]]) -> Config:
  """The `Config` the training run of (`experiment`, `row`, `seed`) gets; for the untrained
  row, the config of the backbone it initialises (no training)."""
  from psl_tf import config as config_lib  # pylint: disable=g-import-not-at-top  (TensorFlow)
  if ROWS[row][0] is None:
    return config_lib.from_flags(untrained_flags(experiment.task, seed, data, workdir,
                                                 settings))
  return config_lib.from_flags(flag_values(
      train_flags(experiment, row, seed, data, workdir, settings, flops)))


def untrained_flags(task: str, seed: int, data: str, workdir: str,
                    settings: Mapping[str, Any]) -> dict[str, str]:
  """The flags.txt of an untrained run (the backbone of `seed`, stored as a finished stage)."""
  return {"task": task, "mode": "e2e", "backbone": "cifar_resnet",
          "depth": str(settings["depth"]), "width": str(settings["width"]),
          "image_size": str(settings["image_size"]), "image_check": "none",
          "dataset": f"folder:{data}", "seed": str(seed), "workdir": workdir}


# Flags that name where a run is, not what it learns.
_PLACE = ("workdir", "seed")
# What an untrained run is: its backbone.
_BACKBONE = ("backbone", "depth", "width", "filters_factor", "recompute", "image_size")


def identity(config: Config, trained: bool = True) -> dict[str, str]:
  """What a run learns, as {flag: text}: `Config.to_flags` without the work directory, the
  seed and the resume-safe options (they change no weight), the data folder's location kept
  to its kind (`folder`: the same images wherever they are unpacked). An untrained run is its
  backbone alone."""
  from psl_tf import config as config_lib  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from psl_tf import options as options_lib  # pylint: disable=g-import-not-at-top
  flags = config_lib.to_flags(config)
  if not trained:
    return {"untrained": "true", **{k: flags[k] for k in _BACKBONE if k in flags}}
  safe = {f.name for f in options_lib.options_of(type(config))
          if f.metadata.get("resume_safe")}
  options = config.task_options
  names = options_lib.flag_names(type(options))
  safe |= {names[f.name] for f in options_lib.options_of(type(options))
           if f.metadata.get("resume_safe")}
  out = {k: v for k, v in flags.items() if k not in _PLACE and k not in safe}
  if out.get("dataset", "").startswith("folder:"):
    out["dataset"] = "folder"
  return out


def run_id(config: Config, trained: bool = True) -> str:
  """A run's identity: the first 12 hex digits of the SHA-256 of its sorted `identity`."""
  text = json.dumps(identity(config, trained), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def expected_run_id(experiment: Experiment, row: str, settings: Mapping[str, Any],
                    flops: Callable[[], Sequence[int]]) -> str:
  """The run id every seed of (`experiment`, `row`) has (it depends on neither the seed nor
  where the data and the work directory are)."""
  config = config_of(experiment, row, 0, "/data", "/work", settings, flops)
  return run_id(config, trained=ROWS[row][0] is not None)


def record_run_id(record: Mapping[str, Any]) -> str | None:
  """The run id of a stored record: the one it stores, else (records written before run ids)
  the one its training command gives, or for the untrained row its backbone's; None for a
  record that keeps neither (hand-made)."""
  if record.get("run_id"):
    return str(record["run_id"])
  from psl_tf import config as config_lib  # pylint: disable=g-import-not-at-top  (TensorFlow)
  if record.get("row") == RANDOM:
    settings = record.get("settings") or {}
    if not all(k in settings for k in ARCH):
      return None
    flags = untrained_flags(record.get("task", "rotation"), 0, "/data", "/work", settings)
    return run_id(config_lib.from_flags(flags), trained=False)
  command = record.get("train_command")
  if not command or command.startswith("("):
    return None
  args = shlex.split(command)
  return run_id(config_lib.from_flags(flag_values(args)))


# Semi-supervised fine-tuning (an experiment's `finetune`): the whole network and a linear
# classifier on B5, on class-balanced subsets of the train labels chosen by the run's seed; one
# setting for every row (not tuned: the same for the rows compared).
FINETUNE_FRACTIONS = ("0.01", "0.1")
FINETUNE_FLAGS = ("--epochs=30", "--batch_size=64", "--learning_rate=0.05",
                  "--lr_schedule=cosine", "--weight_decay=5e-4")


def probe_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
  """The probe protocol part of a record's settings (absent keys of older records: None)."""
  return {k: settings.get(k) or None for k in PROBE_SETTINGS}
