"""The CIFAR-10 campaign's experiments (`scripts/campaign_cifar10.sh` runs them in its order,
docs/RESULTS.md reads them): the default recipe of each task, and each variant as the flags it
changes. An experiment's name is its task and its variant (`rotation_headgrid4`); its runs keep
the directory labels the campaign has always given them (`psl_headgrid4_s0`).
"""

from __future__ import annotations

from typing import Mapping

from psl_tf.experiments.base import Experiment, Row

# Variants, by the name an experiment of each task that has it carries after the task's
# (`variant_of`); "" is the default recipe.
DEFAULT = ""
GRID = "headgrid4"
ONE_SCHEDULE = "headgrid4_lrrestartfalse"
GRID_COSINE = "headgrid4_lrschedulecosine"
ONE_COSINE = "headgrid4_lrrestartfalse_lrschedulecosine"
COSINE = "lrschedulecosine"
ONE_COSINE_DEFAULT_HEADS = "lrrestartfalse_lrschedulecosine"
FROZEN_BN = "headgrid4_frozenbnbatchstats"
EPOCHS_357 = "headgrid4_epochs357"
EPOCHS_753 = "headgrid4_epochs753"
LINEAR_HEADS = "headgrid4_headhidden0"
BFLOAT16 = "precisionmixedbfloat16"
SEMI = "semisup"
TILES_2X = "tiles2x"
PERMS_2000 = "perms2000"
WIDTH_32 = "w32"
PAPER_LARS = "paperlars"
PAPER_SPLIT = "epochs456"

# The seven rows of the paper's layout (greedy is not part of the campaign).
_ALL_ROWS = tuple(Row(r) for r in ("psl", "sl", "psl_f", "e2e", "psl_paper", "e2e_matched",
                                   "e2e_at_psl"))
_CONTRASTIVE_ROWS = (Row("e2e"), Row("psl"), Row("e2e_at_psl"))
_GRID = {"head_grid": 4}
# The winning rotation recipe: grid heads, one cosine decay over psl's whole run against
# e2e_at_psl on cosine (equal compute).
_ONE_COSINE_PAIR = (Row("psl", {"lr_restart": False, "lr_schedule": "cosine"}),
                    Row("e2e_at_psl", {"lr_schedule": "cosine"}))
# Jigsaw tiles cut from the image upsampled 2x (19 px tiles in 22 px cells) with the rotation
# recipe.
_TILES_2X = {"jigsaw_resize": 75, "jigsaw_crop": 66, "jigsaw_cell": 22, "jigsaw_tile": 19,
             "head_grid": 4, "lr_schedule": "cosine"}


def _variant(task: str, variant: str, overrides: Mapping[str, object], rows: tuple[str, ...],
             seeds: tuple[int, ...], base: str = DEFAULT) -> Experiment:
  return Experiment(f"{task}_{variant}", task, overrides, tuple(Row(r) for r in rows), seeds,
                    base=f"{task}_{base}" if base else None)


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("rotation", "rotation", rows=_ALL_ROWS, seeds=(0, 1, 2, 3)),
    Experiment("jigsaw", "jigsaw", rows=_ALL_ROWS, seeds=(0, 1, 2)),
    Experiment("simclr", "simclr", rows=_CONTRASTIVE_ROWS, seeds=(0, 1, 2)),
    Experiment("mocov2", "mocov2", rows=_CONTRASTIVE_ROWS, seeds=(0, 1, 2)),
    # The head ablation: global pooling vs a 4x4 grid, for psl and e2e alike.
    _variant("rotation", GRID, _GRID, ("psl", "e2e", "e2e_at_psl"), (0, 1, 2, 3)),
    # Why PSL loses with the grid head, each change on top of it.
    _variant("rotation", ONE_SCHEDULE, {**_GRID, "lr_restart": False}, ("psl",), (0, 1, 2, 3),
             base=GRID),
    _variant("rotation", FROZEN_BN, {**_GRID, "frozen_bn": "batch_stats"}, ("psl",), (0, 1),
             base=GRID),
    _variant("rotation", EPOCHS_357, {**_GRID, "epochs": "3,5,7"}, ("psl",), (0, 1), base=GRID),
    _variant("rotation", EPOCHS_753, {**_GRID, "epochs": "7,5,3"}, ("psl",), (0, 1), base=GRID),
    _variant("rotation", LINEAR_HEADS, {**_GRID, "head_hidden": 0}, ("psl",), (0, 1),
             base=GRID),
    # e2e on a cosine schedule (the control), then psl on one cosine decay over its run.
    _variant("rotation", GRID_COSINE, {**_GRID, "lr_schedule": "cosine"},
             ("e2e_at_psl", "e2e"), (0, 1, 2, 3), base=GRID),
    _variant("rotation", ONE_COSINE, {**_GRID, "lr_restart": False, "lr_schedule": "cosine"},
             ("psl",), (0, 1, 2, 3), base=ONE_SCHEDULE),
    # The precision A/B: bf16 pre-training against the float32 rows.
    _variant("rotation", BFLOAT16, {"precision": "mixed_bfloat16"}, ("psl", "e2e"), (0, 1, 2)),
    # Semi-supervised fine-tuning of the winning recipe, both rows trained again with their
    # weights kept; psl compared with the recipe's stored psl runs (trained without keeping
    # weights; its e2e_at_psl runs are another experiment's, so that row has no comparison).
    Experiment(f"rotation_{SEMI}", "rotation", _GRID, _ONE_COSINE_PAIR, (0, 1, 2),
               tag=f"_{SEMI}", finetune=True, base=f"rotation_{ONE_COSINE}"),
    # The winning recipe at width 32 (its own untrained floor), psl against width 16's.
    Experiment(f"rotation_{WIDTH_32}", "rotation", _GRID, _ONE_COSINE_PAIR, (0, 1, 2),
               tag=f"_{WIDTH_32}", settings={"width": 32}, base=f"rotation_{ONE_COSINE}"),
    Experiment(f"jigsaw_{TILES_2X}", "jigsaw", _TILES_2X,
               (Row("psl", {"lr_restart": False}), Row("e2e_at_psl")), (0, 1, 2),
               tag=f"_{TILES_2X}"),
    # Jigsaw with the paper's 500/1000/2000 permutations (average Hamming criterion) at 32 px,
    # the rotation recipe: queued once the 2x tiles were solved too (99 % held-out at levels 1
    # and 2), the other way the issue names to make the ladder hard.
    Experiment(f"jigsaw_{PERMS_2000}", "jigsaw",
               {"jigsaw_sizes": "500,1000,2000", "head_grid": 4, "lr_schedule": "cosine"},
               (Row("psl", {"lr_restart": False}), Row("e2e_at_psl")), (0, 1, 2),
               tag=f"_{PERMS_2000}"),
    # SimCLR under the paper's protocol beside the recipe's rows: the 15 epochs split as close
    # to 60/70/70 as whole epochs allow (4,5,6), LARS at lr 0.3 x batch / 256 with weight decay
    # 1e-6 and a 0.75-epoch warm-up, one cosine decay without restart; against e2e with the
    # same optimiser at equal images and at psl's compute (10 epochs: psl's 4,5,6 costs 52
    # TFLOPs, 5,5,5 51, e2e's 10 epochs 49).
    Experiment(f"simclr_{PAPER_LARS}", "simclr",
               {"optimizer": "lars", "learning_rate": 0.3, "simclr_lr_scaling": "linear",
                "weight_decay": "1e-6", "warmup_epochs": 0.75},
               (Row("psl", {"epochs": "4,5,6"}), Row("e2e"), Row("e2e_at_psl")), (0, 1, 2),
               tag=f"_{PAPER_LARS}"),
    # MoCo v2 under the paper's protocol: PSL's 15 epochs split 4,5,6 (the 60/70/70 of 200 as
    # whole epochs), on the one cosine decay without restart every MoCo v2 row has; MoCo v2
    # keeps its SGD (the paper names LARS for SimCLR and applies PSL to MoCo v2 "similarly").
    # Compared with the stored e2e (equal images) and e2e_at_psl rows of `mocov2`: e2e_at_psl's
    # 10 epochs (48.8 TFLOPs) are 94 % of psl's compute at 4,5,6 (52.1), as in simclr_paperlars.
    _variant("mocov2", PAPER_SPLIT, {"epochs": "4,5,6"}, ("psl",), (0, 1, 2)),
    # Schedules on jigsaw at equal compute, default heads.
    _variant("jigsaw", COSINE, {"lr_schedule": "cosine"}, ("e2e_at_psl",), (0, 1)),
    _variant("jigsaw", ONE_COSINE_DEFAULT_HEADS, {"lr_restart": False, "lr_schedule": "cosine"},
             ("psl",), (0, 1)),
)

BY_NAME: dict[str, Experiment] = {e.name: e for e in EXPERIMENTS}
if len(BY_NAME) != len(EXPERIMENTS):
  raise ValueError("two CIFAR-10 experiments share a name")


def get(name: str) -> Experiment:
  """The experiment called `name`."""
  if name not in BY_NAME:
    raise KeyError(f"no CIFAR-10 experiment {name!r}; known: {', '.join(BY_NAME)}")
  return BY_NAME[name]


def variant_of(task: str, variant: str) -> Experiment | None:
  """`task`'s experiment of `variant` ("" the default), or None if the campaign has none."""
  return BY_NAME.get(f"{task}_{variant}" if variant else task)


def of_task(task: str) -> list[Experiment]:
  """The experiments of `task`, the default first."""
  return [e for e in EXPERIMENTS if e.task == task]


def base_of(experiment: Experiment) -> Experiment | None:
  """The experiment `experiment`'s rows are compared with (its `base`, else its task's default
  experiment), None for a task's default experiment itself."""
  name = experiment.base or experiment.task
  if name == experiment.name:
    return None
  return BY_NAME.get(name, Experiment(name, experiment.task))
