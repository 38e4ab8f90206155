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

For one task, pre-trains every requested row and seed with a small `cifar_resnet`, each as its
own `python -m psl_tf.train` process, probes its frozen blocks B1..B5 with linear classifiers
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
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.experiments import base
from psl_tf.experiments import cifar10
from psl_tf.experiments import costs
from psl_tf.experiments import records as records_lib
from psl_tf.experiments import tables
from psl_tf.experiments.base import (ARCH, BLOCKS, CONTRASTIVE, COMMON_TRAIN_FLAGS,  # pylint: disable=unused-import
                                     FINETUNE_FLAGS, FINETUNE_FRACTIONS, MODES, PRESETS,
                                     PROBE_SETTINGS, RANDOM, ROWS, SETTINGS, STAGES_PER_MODE,
                                     TASKS, extra_tag, probe_settings, task_flags)
from psl_tf.experiments.records import (aggregate, difference, fmt, format_p, mean_spread,  # pylint: disable=unused-import
                                        welch_p)
from psl_tf.experiments.tables import comparisons, difference_cell, variant_comparison  # pylint: disable=unused-import
# pylint: enable=g-import-not-at-top,wrong-import-position


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


def settings_of(args):
  return {k: getattr(args, k) for k in SETTINGS}


# ---- compute (psl_tf.experiments.costs) -----------------------------------------------------

def block_flops(depth, width, image_size):
  """Forward FLOPs of each block of the backbone for one image (TensorFlow's profiler)."""
  return costs.cifar_resnet_flops(depth, width, image_size)


stage_costs = costs.stage_costs


def flops_of(args):
  """Block FLOPs of the preset's backbone, computed once and kept with the results."""
  return costs.stored_block_flops(args.results, args.depth, args.width, args.image_size,
                                  count=lambda *a: block_flops(*a))


def epochs_of(args, row):
  """Epochs per stage of a row (one number: every stage of the row trains that long)."""
  return base.row_epochs(args.experiment, row, settings_of(args), lambda: flops_of(args))


def stage_epochs(args, row):
  """Epochs of each stage of a row: the row's rule, unless its flags give `--epochs=a,b,c`."""
  return base.stage_epochs(args.experiment, row, settings_of(args), lambda: flops_of(args))


def training_tflops(args, row, epochs):
  """Training compute of one run in TFLOPs; `epochs` is one number, or one per stage."""
  return costs.training_tflops(ROWS[row][0], flops_of(args), epochs,
                               args.steps_per_epoch * args.batch_size)


def expected_run_id(args, row, _cache={}):  # pylint: disable=dangerous-default-value
  """The run id of `row` of the requested experiment (its config's hash)."""
  key = (repr(args.experiment), args.results, tuple(settings_of(args).items()), row)
  if key not in _cache:
    _cache[key] = base.expected_run_id(args.experiment, row, settings_of(args),
                                       lambda: flops_of(args))
  return _cache[key]


# ---- running -------------------------------------------------------------------------------

def run_name(args, row, seed):
  return base.run_name(args.experiment, row, seed, args.preset, settings_of(args))


def run_dir(args, row, seed):
  return os.path.join(args.root, args.task, run_name(args, row, seed))


def stored_dir(args, row, seed):
  return os.path.join(args.results, args.task, run_name(args, row, seed))


def train_command(args, row, seed):
  return [sys.executable, "-m", "psl_tf.train",
          *base.train_flags(args.experiment, row, seed, os.path.abspath(args.data),
                            run_dir(args, row, seed), settings_of(args),
                            lambda: flops_of(args))]


def eval_command(args, row, seed):
  workdir = run_dir(args, row, seed)
  cmd = [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
         "--protocol=linear", f"--probe_inputs={args.probe_inputs}", "--precision=float32",
         f"--epochs={args.probe_epochs}", f"--batch_size={args.probe_batch_size}",
         f"--learning_rate={args.probe_learning_rate}", f"--seed={seed}",
         f"--output={os.path.join(workdir, 'eval')}"]
  if args.probe_steps:
    cmd.append(f"--steps_per_epoch={args.probe_steps}")
  if args.probe_weight_decays:
    cmd += [f"--probe_weight_decays={args.probe_weight_decays}", "--probe_val_fraction=0.1"]
  return cmd


def knn_command(args, row, seed):
  """Weighted kNN (k=200, T=0.07, globally pooled features of B1..B5; InstDisc's protocol)."""
  workdir = run_dir(args, row, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}", "--protocol=knn",
          "--precision=float32", f"--batch_size={args.probe_batch_size}", f"--seed={seed}",
          f"--output={os.path.join(workdir, 'eval_knn')}"]


def finetune_command(args, row, seed):
  """Fine-tuning on 1 % and 10 % of the labels, the subsets chosen by the run's seed."""
  workdir = run_dir(args, row, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
          "--protocol=finetune", "--precision=float32",
          f"--label_fractions={','.join(FINETUNE_FRACTIONS)}", *FINETUNE_FLAGS,
          f"--seed={seed}", f"--output={os.path.join(workdir, 'eval_finetune')}"]


def _find_eval_json(workdir, row, protocol):
  """The run's own `protocol` JSON from psl_tf.evaluate, if it has one."""
  eval_dir = os.path.join(workdir, "eval")
  if not os.path.isdir(eval_dir):
    return None
  suffix = f"_stage{STAGES_PER_MODE[ROWS[row][0]]}.json"
  hits = sorted(n for n in os.listdir(eval_dir)
                if n.startswith(protocol + "_") and n.endswith(suffix))
  return os.path.join(eval_dir, hits[-1]) if hits else None


def _finished(workdir, row):
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  return len(wd.finished_stages(workdir)) >= STAGES_PER_MODE[ROWS[row][0]]


def _run(cmd, log_path):
  """Runs `cmd` from the repository root, appending its output to `log_path`; returns s."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.time()
  with open(log_path, "a") as log:
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    result = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            check=False)
  if result.returncode:
    raise RuntimeError(f"command failed (exit {result.returncode}), see {log_path}: "
                       f"{shlex.join(cmd)}")
  return time.time() - start


_PROCESSES = "training_processes.txt"


def _note_training_process(workdir):
  """Appends the running code's commit to the run's list of training processes: a run
  resumed across sessions (or kills) is trained by every commit on that list."""
  with open(os.path.join(workdir, _PROCESSES), "a") as f:
    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {code_version()}\n")


def _training_code_versions(workdir):
  """The commits that pre-trained the run in `workdir`, in order, each once."""
  path = os.path.join(workdir, _PROCESSES)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    versions = [line.split()[1] for line in f if len(line.split()) == 2]
  return list(dict.fromkeys(versions))


def _find_probe_json(args, workdir, row):
  """The run's own linear-probe JSON from psl_tf.evaluate (its name holds the data path), if
  it was probed the way `args` asks."""
  eval_dir = os.path.join(workdir, "eval")
  if not os.path.isdir(eval_dir):
    return None
  suffix = f"_stage{STAGES_PER_MODE[ROWS[row][0]]}.json"
  hits = sorted(n for n in os.listdir(eval_dir) if n.startswith("linear_") and n.endswith(suffix))
  if not hits:
    return None
  path = os.path.join(eval_dir, hits[-1])
  with open(path) as f:
    got = json.load(f).get("settings", {})
  decays = ",".join(f"{d:g}" for d in got.get("probe_weight_decays", []))
  want = ",".join(f"{float(d):g}" for d in (args.probe_weight_decays or "").split(",") if d)
  same = (got.get("epochs") == args.probe_epochs and got.get("batch_size") ==
          args.probe_batch_size and got.get("learning_rate") == args.probe_learning_rate and
          got.get("probe_inputs") == args.probe_inputs and decays == want)
  return path if same else None


def write_random_run(args, seed):
  """A work directory holding the untrained backbone of `seed` as its finished stage 1.

  pretrain.run seeds Keras with the run's seed right before building the backbone, so this is
  bit for bit the initialisation the seed's pre-training runs start from.
  """
  import keras  # pylint: disable=g-import-not-at-top  (TensorFlow only where needed)
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  workdir = run_dir(args, RANDOM, seed)
  keras.utils.set_random_seed(seed)
  backbone = models.build_backbone("cifar_resnet", depth=args.depth, width=args.width)
  wd.write_flags(workdir, {"task": args.task, "mode": "e2e", "backbone": "cifar_resnet",
                           "depth": args.depth, "width": args.width,
                           "image_size": args.image_size, "image_check": "none",
                           "dataset": f"folder:{os.path.abspath(args.data)}", "seed": seed,
                           "workdir": workdir})
  wd.write_summary(workdir, {"mode": RANDOM, "stages": [
      {"stage": 1, "wall_time_s": 0.0, "pretext_accuracy": None}]})
  wd.save_backbone_weights(backbone, wd.stage_weights_path(workdir, 1))


def _git(*cmd):
  """`git cmd` in the repository (completed process; never raises on a git error)."""
  return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)


def code_version():
  """The commit of the code that runs (with '+' when the checkout has local changes)."""
  commit = _git("rev-parse", "HEAD").stdout.strip()
  if not commit:
    return "unknown"
  dirty = _git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  return commit + ("+" if dirty else "")


def probed_before(record, commit):
  """True if the record's probes were made by code older than `commit` (a strict ancestor;
  a record without `probe_code_version` was probed by the commit that pre-trained it)."""
  version = (record.get("probe_code_version") or record.get("code_version") or "").rstrip("+")
  if not version or version.startswith("unknown"):
    return True
  full = _git("rev-parse", "--verify", "--quiet", commit + "^{commit}").stdout.strip()
  if not full:
    raise ValueError(f"--reprobe_before={commit} is not a commit of this repository")
  if _git("rev-parse", version).stdout.strip() == full:
    return False
  return _git("merge-base", "--is-ancestor", version, full).returncode == 0


def _stored_record(args, row, seed):
  """The record stored under the run's label, or None; RecordMismatch (naming it) when it ran
  another config than the experiment's row."""
  path = os.path.join(stored_dir(args, row, seed), "record.json")
  if not os.path.exists(path):
    return None
  record = records_lib.read(path)
  records_lib.check(path, record, args.experiment, lambda r: expected_run_id(args, r))
  return record


def read_record(args, row, seed):
  """The stored record of a finished run probed the way `args` asks, or None."""
  record = _stored_record(args, row, seed)
  if record is None or not record.get("probes"):
    return None
  if probe_settings(record["settings"]) != probe_settings(vars(args)):
    return None
  if args.reprobe_before and probed_before(record, args.reprobe_before):
    return None
  if getattr(args, "knn", False) and not record.get("knn"):
    return None
  if getattr(args, "finetune", False) and not record.get("finetune"):
    return None
  return record


def run_one(args, row, seed, log=print):
  """Pre-trains (or resumes) and probes one run, stores its small files; returns its record.

  A run whose record is already stored is not run again.
  """
  stored = read_record(args, row, seed)
  if stored is not None:
    log(f"-- {run_name(args, row, seed)}: stored in {stored_dir(args, row, seed)}, skipped")
    return stored
  workdir = run_dir(args, row, seed)
  kept = _stored_record(args, row, seed)
  if (row != RANDOM and kept and kept.get("probes") and args.reprobe_before and
      probe_settings(kept["settings"]) == probe_settings(vars(args)) and
      not _finished(workdir, row)):
    log(f"-- {run_name(args, row, seed)}: its weights are not in {workdir}, so it cannot be "
        "probed again; its stored probes are kept")
    return kept
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, "reproduce.log")
  epochs = [0] if row == RANDOM else stage_epochs(args, row)
  record = {"row": row, "mode": ROWS[row][0] or RANDOM, "protocol": ROWS[row][1],
            "seed": seed, "task": args.task, "tag": "" if row == RANDOM else args.tag,
            # What it runs: its config's hash (the label above is only its directory's name).
            "run_id": expected_run_id(args, row),
            **({} if row == RANDOM else {"experiment": args.experiment.name}),
            "preset": args.preset,
            "code_version": code_version(),
            "settings": {k: getattr(args, k) for k in SETTINGS},
            # One number when every stage trains as long, else one per stage ("3,5,7").
            "epochs_per_stage": (epochs[0] if len(set(epochs)) == 1
                                 else ",".join(map(str, epochs))),
            "train_command": ("(untrained initialisation)" if row == RANDOM
                              else shlex.join(train_command(args, row, seed))),
            "eval_command": shlex.join(eval_command(args, row, seed)),
            "training_tflops": training_tflops(args, row, epochs),
            # TensorFlow's oneDNN kernels as the child processes get them (import psl_tf asks
            # for them unless the environment says otherwise).
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)")}
  trained_now = False
  if row == RANDOM:
    if not _finished(workdir, row):
      write_random_run(args, seed)
  elif not _finished(workdir, row):
    if kept is not None:
      log(f"-- {run_name(args, row, seed)} is stored with other probe settings, but its "
          f"weights are not in {workdir}: pre-training it again")
    log(f"-- pre-training {args.task} {row} seed {seed} ({workdir})")
    _note_training_process(workdir)
    record["train_process_s"] = round(_run(train_command(args, row, seed), log_path), 1)
    trained_now = True
  if kept is not None and not trained_now:
    # Pre-trained earlier, probed again (other probe settings, or older probe code): keep the
    # commit and the time of its pre-training; `probe_code_version` says what probed it.
    record["code_version"] = kept.get("code_version", "unknown (not recorded)")
    for key in ("train_code_versions", "train_process_s"):
      if key in kept:
        record[key] = kept[key]
    if kept.get("probes"):  # what the probes it replaces said, for the report
      record["previous_probes"] = {
          "probe_code_version": kept.get("probe_code_version") or kept.get("code_version"),
          "settings": probe_settings(kept["settings"]),
          "top1": {b: v.get("top1") for b, v in kept["probes"].items()}}
  versions = _training_code_versions(workdir)
  if versions:
    record["train_code_versions"] = versions
  probe_json = _find_probe_json(args, workdir, row)
  if probe_json is not None and args.reprobe_before and kept is not None and probed_before(
      kept, args.reprobe_before):
    probe_json = None  # the work directory's probes are the old code's
  if probe_json is None:
    log(f"-- linear probes for {row} seed {seed}")
    record["probe_code_version"] = code_version()
    record["probe_process_s"] = round(_run(eval_command(args, row, seed), log_path), 1)
    probe_json = _find_probe_json(args, workdir, row)
    if probe_json is None:
      raise RuntimeError(f"psl_tf.evaluate left no probe results in {workdir}/eval")
  with open(probe_json) as f:
    probes = json.load(f)
  record["probes"] = {b: v for b, v in probes["results"].items() if b in BLOCKS}
  extra_protocols = [("knn", knn_command)] if getattr(args, "knn", False) else []
  if getattr(args, "finetune", False):  # the untrained network too: training from scratch
    extra_protocols.append(("finetune", finetune_command))
  for protocol, command in extra_protocols:
    found = _find_eval_json(workdir, row, protocol)
    if found is None:
      log(f"-- {protocol} for {row} seed {seed}")
      record[f"{protocol}_process_s"] = round(_run(command(args, row, seed), log_path), 1)
      found = _find_eval_json(workdir, row, protocol)
      if found is None:
        raise RuntimeError(f"psl_tf.evaluate left no {protocol} results in {workdir}/eval")
    with open(found) as f:
      results = json.load(f)["results"]
    record[protocol] = ({b: v for b, v in results.items() if b in BLOCKS}
                        if protocol == "knn" else results)
    record[f"{protocol}_command"] = shlex.join(command(args, row, seed))
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  stages = summary["stages"]
  # Training time inside fit (the stages' own clocks); the process time adds start-up.
  record["train_wall_s"] = round(sum(s.get("wall_time_s") or 0 for s in stages), 1)
  record["stage_pretext_accuracy"] = [s.get("pretext_accuracy") for s in stages]
  record["stage_heldout_accuracy"] = [s.get("heldout_pretext_accuracy") for s in stages]
  record["pretext_accuracy"] = stages[-1].get("pretext_accuracy")
  record["heldout_accuracy"] = stages[-1].get("heldout_pretext_accuracy")
  out = stored_dir(args, row, seed)
  os.makedirs(out, exist_ok=True)
  shutil.copy(os.path.join(workdir, "summary.json"), os.path.join(out, "summary.json"))
  shutil.copy(probe_json, os.path.join(out, "probes.json"))
  with open(os.path.join(out, "record.json"), "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  log(f"-- {run_name(args, row, seed)} stored in {out}")
  return record



# ---- tables (psl_tf.experiments.records, .tables) ------------------------------------------

def load_records(results, task, tag="", probes=None, arch=None, expected=None):
  """Every stored record of `task` with label `tag` (see records.load_records)."""
  experiment = base.Experiment(f"{task}{tag}", task, tag=tag)
  return records_lib.load_records(results, experiment, probes, arch, expected)


def markdown(args, records, table, base_table=None):
  """The results as Markdown (tables.markdown with the command line's experiment)."""
  return tables.markdown(args.task, records, table, base_table, tag=args.tag, extra=args.extra,
                         base_tag=args.base_tag, base_extra=args.base_extra,
                         preset=args.preset, settings=settings_of(args))


def write_results(args, records=None):
  """Writes results.md/.json/.png under <results>/<task>/ from the stored records, each
  checked against the experiment's config."""
  probes = probe_settings(vars(args))
  arch = {k: getattr(args, k) for k in ARCH}
  if records is None:
    records = records_lib.load_records(args.results, args.experiment, probes, arch,
                                       lambda row: expected_run_id(args, row))
  base_records = None
  if args.tag:
    other = args.base_experiment or base.Experiment(args.task, args.task)
    base_args = argparse.Namespace(**{**vars(args), "experiment": other})
    base_records = records_lib.load_records(args.results, other, probes, arch,
                                            lambda row: expected_run_id(base_args, row))
  return tables.write(os.path.join(args.results, args.task), args.task, records, base_records,
                      tag=args.tag, extra=args.extra, base_tag=args.base_tag,
                      base_extra=args.base_extra, preset=args.preset,
                      settings=settings_of(args))


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  if args.phase == "all":
    os.makedirs(os.path.join(args.root, args.task), exist_ok=True)
    for seed in args.seeds:  # seed-major: a partial campaign still has every row of seed 0
      for row in args.rows + ([RANDOM] if args.random_baseline else []):
        run_one(args, row, seed)
  text = write_results(args)
  print(text)
  print(f"reproduce: {time.time() - start:.0f} s; wrote "
        f"{os.path.join(args.results, args.task)}/results{args.tag}.md/.json/.png")


if __name__ == "__main__":
  main()
