r"""The PSL-vs-baselines experiment on an image folder (the paper's Tables 5/6 layout).

  python scripts/reproduce.py --preset=cifar10 --task=rotation --data=/tmp/cifar10 \
      --root=/tmp/campaign --results=docs/results/cifar10 --rows=psl,e2e --seeds=0,1,2
  python scripts/reproduce.py --preset=cifar10 --experiment=rotation_headgrid4 \
      --data=/tmp/cifar10 --root=/tmp/campaign --results=docs/results/cifar10 --seeds=0
  python scripts/reproduce.py --preset=cifar10 --task=rotation --results=docs/results/cifar10 \
      --phase=table                      # tables and plot from the stored results only

A thin driver over `psl_tf.experiments`: `--experiment=NAME` runs one of the CIFAR-10
campaign's experiments (`psl_tf/experiments/cifar10.py`: its task, flags, rows and label; its
rows and seeds unless --rows/--seeds choose some); `--task` with `--extra=--flag=value` (and
`--tag`) makes a one-off variant the same way. Each stored record keeps its run id (a hash of
the run's config, `psl_tf.experiments.base.run_id`); a record stored under a run's label that
ran another config stops the campaign with an error naming it.

For one task (`psl_tf.experiments.runner`), pre-trains every requested row and seed with a
small `cifar_resnet`, each as its own `python -m psl_tf.train` process, probes its frozen
blocks B1..B5 with linear classifiers
(`python -m psl_tf.evaluate --protocol=linear`, trained on the labelled train split, scored on
the test split) and keeps the small result files of every finished run in
`<results>/<task>/<run>/` (`record.json`, `summary.json`, `probes.json`; never weights), so a
campaign spread over several sessions resumes from what is stored: a run whose record is there
is never run again, a run interrupted mid-training resumes from its work directory under
`--root` when that still exists; `--reprobe_before=COMMIT` probes again (weights kept) the runs
whose probes older code made. Tables are always built from the stored records.

Rows (one pre-training recipe each; `--stage_epochs` E is the budget unit):

* equal images seen: `psl`, `sl`, `psl_f`, `greedy` train E epochs per stage, `e2e` 3E epochs
  in its single stage, so every row sees the same images;
* the paper's protocol: `psl_paper` trains 3E epochs per stage (each stage as long as e2e, as
  the paper's 60 epochs per stage), and `e2e_matched` is e2e trained for as many epochs as
  cost the same training FLOPs as `psl_paper` (frozen blocks cost one forward pass, trained
  blocks three; block FLOPs counted by TensorFlow's profiler);
* equal compute at the equal-images budget: `e2e_at_psl` is e2e trained for as many epochs as
  cost what `psl` costs (a three-stage row's frozen blocks are cheaper than trained ones, so
  `psl` at equal images costs less than `e2e`);
* `random`: the untrained initialisation of each seed, probed the same way (the floor).

The data folder needs `train/<class>/*.jpg` and `test/<class>/*.jpg` (or .png)."""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.experiments import base
from psl_tf.experiments import cifar10
from psl_tf.experiments import costs
from psl_tf.experiments import records as records_lib
from psl_tf.experiments import runner
from psl_tf.experiments import tables
from psl_tf.experiments.base import (ARCH, BLOCKS, CONTRASTIVE, COMMON_TRAIN_FLAGS,  # pylint: disable=unused-import
                                     FINETUNE_FLAGS, FINETUNE_FRACTIONS, MODES, PRESETS,
                                     PROBE_SETTINGS, RANDOM, ROWS, SETTINGS, STAGES_PER_MODE,
                                     TASKS, extra_tag, probe_settings, task_flags)
from psl_tf.experiments.records import (aggregate, difference, fmt, format_p, mean_spread,  # pylint: disable=unused-import
                                        welch_p)
from psl_tf.experiments.tables import comparisons, difference_cell, plot, variant_comparison  # pylint: disable=unused-import
from psl_tf.experiments.runner import probe_flags  # pylint: disable=unused-import
# pylint: enable=g-import-not-at-top,wrong-import-position


def arch_suffix(args):
  """'' for the preset's backbone and image size, else e.g. '_d10_w32_32px' (`args`: preset,
  depth, width, image_size as attributes)."""
  return base.arch_suffix(args.preset, {k: getattr(args, k) for k in ARCH})


def _overrides(extra):
  """{flag name: text} of `--extra` flags (a flag without a value: None), the last of a
  repeated flag kept where it comes first."""
  out = {}
  for flag in extra:
    name, _, text = flag.lstrip("-").partition("=")
    out[name] = text if "=" in flag else None
  return out


def parse_args(argv=None):
  """The command line, with the experiment's and the preset's settings filled in where no
  explicit flag was given."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--experiment", default=None, choices=sorted(cifar10.BY_NAME),
                      metavar="NAME", help="one of the CIFAR-10 campaign's experiments "
                      "(psl_tf/experiments/cifar10.py); sets --task and its flags")
  parser.add_argument("--task", default=None, choices=TASKS, help="(default: rotation)")
  parser.add_argument("--data", default=None,
                      help="image-folder tree with train/ and test/ (not needed for "
                      "--phase=table)")
  parser.add_argument("--root", default="runs/reproduce", help="where run directories go")
  parser.add_argument("--results", default=None,
                      help="where each finished run's small result files and the tables go "
                      "(default: the --root folder)")
  parser.add_argument("--rows", "--modes", dest="rows", default=None,
                      help=f"comma-separated rows among {','.join(r for r in ROWS if r != RANDOM)} "
                      "(default: the experiment's, else psl,sl,psl_f,e2e,greedy)")
  parser.add_argument("--seeds", default=None,
                      help="comma-separated seeds, e.g. 0,1 (default: the experiment's, else 0)")
  parser.add_argument("--preset", "--budget", dest="preset", default="small",
                      choices=sorted(PRESETS))
  for name in SETTINGS:
    kind = {"probe_learning_rate": float, "probe_inputs": str,
            "probe_weight_decays": str}.get(name, int)
    parser.add_argument(f"--{name}", type=kind, default=None, help="overrides the preset")
  parser.add_argument("--knn", action=argparse.BooleanOptionalAction, default=None,
                      help="also score every run with weighted kNN on B1..B5 (default: on for "
                      "the contrastive tasks)")
  parser.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=None,
                      help="also fine-tune every trained run on 1 %% and 10 %% of the labels "
                      "(class-balanced subsets chosen by the run's seed; default: the "
                      "experiment's)")
  parser.add_argument("--phase", default="all", choices=("all", "table"),
                      help="all: run what is missing, then the tables; table: tables only")
  parser.add_argument("--random_baseline", action=argparse.BooleanOptionalAction, default=True,
                      help="also probe the untrained backbone of each seed (row 'random')")
  parser.add_argument("--extra", action="append", default=[],
                      help="extra psl_tf.train flag for every run, e.g. "
                      "--extra=--frozen_bn=batch_stats (repeatable); changes the run names")
  parser.add_argument("--tag", default="", help="suffix of the run names (variants)")
  parser.add_argument("--reprobe_before", default=None, metavar="COMMIT",
                      help="probe again (pre-trained weights kept) every requested run whose "
                      "stored probes were made by code older than COMMIT, e.g. the first "
                      "commit of a changed probe pipeline")
  parser.add_argument("--base_extra", action="append", default=[],
                      help="the --extra flags of the variant a variant table is compared "
                      "with (default: none, the base campaign), e.g. --base_extra=--head_grid=4 "
                      "for an ablation made on top of the grid head")
  args = parser.parse_args(argv)
  if args.experiment:
    if args.extra or args.tag or args.base_extra or (
        args.task and args.task != cifar10.get(args.experiment).task):
      parser.error("--experiment gives the task, flags and label; leave out --task, --extra, "
                   "--tag and --base_extra")
    args.experiment = cifar10.get(args.experiment)
    args.task = args.experiment.task
    args.base_experiment = cifar10.base_of(args.experiment) or args.experiment
  else:
    args.task = args.task or "rotation"
    # Other learning flags need other work directories (a run resumes only with its flags).
    args.experiment = base.Experiment(f"{args.task}{args.tag or extra_tag(args.extra)}",
                                      args.task, _overrides(args.extra),
                                      tag=args.tag or extra_tag(args.extra))
    args.base_experiment = base.Experiment(f"{args.task}{extra_tag(args.base_extra)}",
                                           args.task, _overrides(args.base_extra))
  if args.experiment.label == args.base_experiment.label and args.experiment.label:
    parser.error("--base_extra names the variant itself; give the flags of the base variant")
  if args.experiment.name == args.base_experiment.name:
    args.base_experiment = None  # the default experiment: no base to compare with
  args.tag = args.experiment.label
  args.extra = args.experiment.extra
  args.base_tag = args.base_experiment.label if args.base_experiment else ""
  args.base_extra = args.base_experiment.extra if args.base_experiment else []
  settings = base.resolve_settings(args.preset, args.experiment,
                                   {k: getattr(args, k) for k in SETTINGS})
  for name, value in settings.items():
    setattr(args, name, value)
  args.results = args.results or args.root
  if args.knn is None:
    args.knn = args.task in CONTRASTIVE
  if args.finetune is None:
    args.finetune = args.experiment.finetune
  planned = [r.name for r in args.experiment.rows] if args.experiment.rows else [
      "psl", "sl", "psl_f", "e2e", "greedy"]
  args.rows = [r for r in args.rows.split(",") if r] if args.rows else planned
  bad = [r for r in args.rows if r not in ROWS or r == RANDOM]
  if bad:
    parser.error(f"unknown row(s) {','.join(bad)}; known: "
                 f"{','.join(r for r in ROWS if r != RANDOM)}")
  try:
    args.seeds = ([int(s) for s in args.seeds.split(",") if s] if args.seeds is not None
                  else list(args.experiment.seeds))
  except ValueError:
    parser.error(f"--seeds takes whole numbers like 0,1, got {args.seeds}")
  if not args.seeds:
    parser.error("--seeds needs at least one seed")
  if args.phase != "table":
    if not args.data:
      parser.error("--data is required to run (only --phase=table works without it)")
    for sub in ("train", "test"):
      if not os.path.isdir(os.path.join(args.data, sub)):
        parser.error(f"{args.data} has no {sub}/ sub-folder; pass an image tree with "
                     "train/<class>/ and test/<class>/")
  return args


def campaign(args):
  """The `runner.Campaign` the command line asks for (made once per parsed command line)."""
  if getattr(args, "_campaign", None) is None:
    args._campaign = runner.campaign_of(  # pylint: disable=protected-access
        args.experiment, args.preset, args.root, args.results,
        {k: getattr(args, k) for k in SETTINGS}, data=args.data, knn=args.knn,
        finetune=args.finetune, reprobe_before=args.reprobe_before,
        base_experiment=args.base_experiment, count_flops=lambda *a: block_flops(*a))
  return args._campaign  # pylint: disable=protected-access


def block_flops(depth, width, image_size):
  """Forward FLOPs of each block of the backbone for one image (TensorFlow's profiler)."""
  return costs.cifar_resnet_flops(depth, width, image_size)


# What tests and the other scripts use, by the command line's arguments.
stage_costs = costs.stage_costs
code_version = runner.code_version
probed_before = runner.probed_before
_run = runner._run  # pylint: disable=protected-access
_by_args = lambda fn: lambda args, *a, **k: fn(campaign(args), *a, **k)  # pylint: disable=unnecessary-lambda-assignment
flops_of = _by_args(runner.Campaign.flops)
epochs_of = _by_args(runner.epochs_of)
stage_epochs = _by_args(runner.stage_epochs)
training_tflops = _by_args(runner.training_tflops)
run_name = _by_args(runner.run_name)
run_dir = _by_args(runner.run_dir)
stored_dir = _by_args(runner.stored_dir)
train_command = _by_args(runner.train_command)
eval_command = _by_args(runner.eval_command)
knn_command = _by_args(runner.knn_command)
finetune_command = _by_args(runner.finetune_command)
write_random_run = _by_args(runner.write_random_run)
read_record = _by_args(runner.read_record)
run_one = _by_args(runner.run_one)
write_results = _by_args(runner.write_tables)


def load_records(results, task, tag="", probes=None, arch=None, expected=None):
  """Every stored record of `task` with label `tag` (see records.load_records)."""
  experiment = base.Experiment(f"{task}{tag}", task, tag=tag)
  return records_lib.load_records(results, experiment, probes, arch, expected)


def markdown(args, records, table, base_table=None):
  """The results as Markdown (tables.markdown with the command line's experiment)."""
  return tables.markdown(args.task, records, table, base_table, tag=args.tag, extra=args.extra,
                         base_tag=args.base_tag, base_extra=args.base_extra,
                         preset=args.preset, settings={k: getattr(args, k) for k in SETTINGS})


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  if args.phase == "all":
    runner.run(campaign(args), args.rows, args.seeds, args.random_baseline)
  text = write_results(args)
  print(text)
  print(f"reproduce: {time.time() - start:.0f} s; wrote "
        f"{os.path.join(args.results, args.task)}/results{args.tag}.md/.json/.png")


if __name__ == "__main__":
  main()
