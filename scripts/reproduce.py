r"""The PSL-vs-baselines experiment on an image folder (the paper's Tables 5/6 layout).

  python scripts/reproduce.py --preset=cifar10 --task=rotation --data=/tmp/cifar10 \
      --root=/tmp/campaign --results=docs/results/cifar10 --rows=psl,e2e --seeds=0,1,2
  python scripts/reproduce.py --preset=cifar10 --task=rotation --results=docs/results/cifar10 \
      --phase=table                      # tables and plot from the stored results only

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

The data folder needs `train/<class>/*.jpg` and `test/<class>/*.jpg` (or .png).
"""

import argparse
import glob
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MODES = ("psl", "sl", "psl_f", "e2e", "greedy")
TASKS = ("rotation", "jigsaw", "simclr", "mocov2")
CONTRASTIVE = ("simclr", "mocov2")
RANDOM = "random"
# row -> (training mode, protocol); the table lists rows in this order.
ROWS = {"psl": ("psl", "equal"), "sl": ("sl", "equal"), "psl_f": ("psl_f", "equal"),
        "e2e": ("e2e", "equal"), "greedy": ("greedy", "equal"),
        "psl_paper": ("psl", "paper"), "e2e_matched": ("e2e", "matched"),
        "e2e_at_psl": ("e2e", "matched_equal"),
        RANDOM: (None, "none")}
BLOCKS = ("b1", "b2", "b3", "b4", "b5")
STAGES_PER_MODE = {"psl": 3, "sl": 3, "psl_f": 3, "greedy": 3, "e2e": 1, None: 1}

# Budgets for CIFAR-10-sized images on a 2-core CPU.
PRESETS = {
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

# Pre-training settings shared by every row (the CIFAR-10 flagfiles' optimiser). Every learning
# flag is explicit, so a later change of the command line's defaults (they are the demo's) cannot
# change what a campaign run started from a newer commit learns.
COMMON_TRAIN_FLAGS = ("--backbone=cifar_resnet", "--optimizer=sgd", "--learning_rate=0.1",
                      "--momentum=0.9", "--weight_decay=5e-4", "--lr_schedule=step",
                      "--lr_step_split=20,20,10,10", "--lr_decay=0.1", "--warmup_epochs=0",
                      "--head_hidden=512", "--frozen_bn=inference", "--precision=float32",
                      "--image_check=none", "--export=false", "--verbose=2")


def extra_tag(extra):
  """The run-name suffix of a variant made by the extra training flags `extra` ('' for none)."""
  return "_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", e) for e in extra) if extra else ""


def parse_args(argv=None):
  """The command line, with the preset filled in where no explicit flag was given."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task", default="rotation", choices=TASKS)
  parser.add_argument("--data", default=None,
                      help="image-folder tree with train/ and test/ (not needed for "
                      "--phase=table)")
  parser.add_argument("--root", default="runs/reproduce", help="where run directories go")
  parser.add_argument("--results", default=None,
                      help="where each finished run's small result files and the tables go "
                      "(default: the --root folder)")
  parser.add_argument("--rows", "--modes", dest="rows", default="psl,sl,psl_f,e2e,greedy",
                      help=f"comma-separated rows among {','.join(r for r in ROWS if r != RANDOM)}")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
  parser.add_argument("--preset", "--budget", dest="preset", default="small",
                      choices=sorted(PRESETS))
  for name in SETTINGS:
    kind = {"probe_learning_rate": float, "probe_inputs": str,
            "probe_weight_decays": str}.get(name, int)
    parser.add_argument(f"--{name}", type=kind, default=None, help="overrides the preset")
  parser.add_argument("--knn", action=argparse.BooleanOptionalAction, default=None,
                      help="also score every run with weighted kNN on B1..B5 (default: on for "
                      "the contrastive tasks)")
  parser.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=False,
                      help="also fine-tune every trained run on 1 %% and 10 %% of the labels "
                      "(class-balanced subsets chosen by the run's seed)")
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
  for name, value in PRESETS[args.preset].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.extra and not args.tag:
    # Other learning flags need other work directories (a run resumes only with its flags).
    args.tag = extra_tag(args.extra)
  args.base_tag = extra_tag(args.base_extra)
  if args.base_tag == args.tag and args.tag:
    parser.error("--base_extra names the variant itself; give the flags of the base variant")
  args.results = args.results or args.root
  if args.knn is None:
    args.knn = args.task in CONTRASTIVE
  args.rows = [r for r in args.rows.split(",") if r]
  bad = [r for r in args.rows if r not in ROWS or r == RANDOM]
  if bad:
    parser.error(f"unknown row(s) {','.join(bad)}; known: "
                 f"{','.join(r for r in ROWS if r != RANDOM)}")
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
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


# ---- compute -------------------------------------------------------------------------------

def block_flops(depth, width, image_size):
  """Forward FLOPs of each block of the backbone for one image (TensorFlow's profiler)."""
  sys.path.insert(0, os.path.join(REPO, "scripts"))
  import bench_speed  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  backbone = models.build_backbone("cifar_resnet", depth=depth, width=width)
  return [int(f) for f in bench_speed.block_flops(backbone, image_size)]


def stage_costs(mode, flops):
  """Training FLOPs per image of each stage of `mode`: one forward pass through the frozen
  blocks below the stage, three (forward, input gradient, weight gradient) through the trained
  ones; heads are left out (under 1 % here)."""
  from psl_tf import stages as stages_lib  # pylint: disable=g-import-not-at-top
  out = []
  for stage in stages_lib.make_stages(mode, 3, "", ""):
    out.append(sum(flops[i - 1] for i in stage.frozen_blocks) +
               3 * sum(flops[i - 1] for i in stage.trained_blocks))
  return out


def flops_of(args):
  """Block FLOPs of the preset's backbone, computed once and kept with the results."""
  path = os.path.join(args.results, "flops.json")
  key = f"cifar_resnet_d{args.depth}_w{args.width}_{args.image_size}px"
  stored = {}
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
  if key not in stored:
    stored[key] = block_flops(args.depth, args.width, args.image_size)
    os.makedirs(args.results, exist_ok=True)
    with open(path, "w") as f:
      json.dump(stored, f, indent=2, sort_keys=True)
  return stored[key]


def epochs_of(args, row):
  """Epochs per stage of a row (one number: every stage of the row trains that long)."""
  mode, protocol = ROWS[row]
  e = args.stage_epochs
  if protocol == "equal":
    return 3 * e if mode == "e2e" else e
  if protocol == "paper":
    return 3 * e
  if protocol in ("matched", "matched_equal"):  # e2e costing what psl_paper / psl costs
    flops = flops_of(args)
    psl = sum(stage_costs("psl", flops)) * (3 * e if protocol == "matched" else e)
    return max(1, round(psl / stage_costs("e2e", flops)[0]))
  raise ValueError(f"row {row} is not trained")


def stage_epochs(args, row):
  """Epochs of each stage of a row: the row's rule, unless an `--extra=--epochs=a,b,c` weights
  the stages (e.g. 3,5,7 against psl's 5,5,5: the same images, spent differently)."""
  count = STAGES_PER_MODE[ROWS[row][0]]
  given = [e.split("=", 1)[1] for e in args.extra if e.startswith("--epochs=")]
  if not given:
    return [epochs_of(args, row)] * count
  values = [int(v) for v in given[-1].split(",") if v]
  if len(values) == 1:
    values = values * count
  if len(values) != count:
    raise ValueError(f"--extra=--epochs={given[-1]} gives {len(values)} stages to a row of "
                     f"{count}")
  return values


def training_tflops(args, row, epochs):
  """Training compute of one run in TFLOPs (10^12 floating-point operations); `epochs` is one
  number for every stage, or one per stage."""
  mode = ROWS[row][0]
  if mode is None:
    return 0.0
  costs = stage_costs(mode, flops_of(args))
  per_stage = epochs if isinstance(epochs, (list, tuple)) else [epochs] * len(costs)
  images_per_epoch = args.steps_per_epoch * args.batch_size
  return sum(c * e * images_per_epoch for c, e in zip(costs, per_stage, strict=True)) / 1e12


# ---- running -------------------------------------------------------------------------------

def task_flags(task):
  """Task settings for 32 px images that keep every task's step cost close to rotation's."""
  if task == "jigsaw":
    # The tiles come from the 32 px image itself (cell 11, tile 9 px: the paper's geometry
    # scaled by 32/224), so nine tiles cost about one 32 px image. The paper's 500/1000/2000
    # classes cannot be learnt at this budget; 50/100/200 (prefixes of the same greedy
    # maximal-Hamming sequence) keep the ladder's shape.
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


ARCH = ("depth", "width", "image_size")


def arch_suffix(args):
  """'' for the preset's backbone and image size, else e.g. '_d10_w32_32px'."""
  preset = PRESETS[args.preset]
  if all(getattr(args, k) == preset[k] for k in ARCH):
    return ""
  return f"_d{args.depth}_w{args.width}_{args.image_size}px"


def run_name(args, row, seed):
  # The untrained network is the same for every variant of one backbone (`--extra` changes
  # only training); another width, depth or image size is another network.
  return f"{row}{arch_suffix(args) if row == RANDOM else args.tag}_s{seed}"


def run_dir(args, row, seed):
  return os.path.join(args.root, args.task, run_name(args, row, seed))


def stored_dir(args, row, seed):
  return os.path.join(args.results, args.task, run_name(args, row, seed))


def train_command(args, row, seed):
  mode = ROWS[row][0]
  return [sys.executable, "-m", "psl_tf.train", f"--task={args.task}", f"--mode={mode}",
          f"--dataset=folder:{os.path.abspath(args.data)}", f"--depth={args.depth}",
          f"--width={args.width}", f"--image_size={args.image_size}",
          f"--batch_size={args.batch_size}", f"--epochs={epochs_of(args, row)}",
          f"--steps_per_epoch={args.steps_per_epoch}", f"--seed={seed}",
          f"--workdir={run_dir(args, row, seed)}", *COMMON_TRAIN_FLAGS,
          *task_flags(args.task), *args.extra]


def probe_flags(args, seed):
  """The psl_tf.evaluate flags of the campaign's linear probes (`args`: the PROBE_SETTINGS,
  e.g. a preset's) for a run of `seed`; scripts/transfer.py probes other data with them."""
  flags = [f"--probe_inputs={args.probe_inputs}", "--precision=float32",
           f"--epochs={args.probe_epochs}", f"--batch_size={args.probe_batch_size}",
           f"--learning_rate={args.probe_learning_rate}", f"--seed={seed}"]
  if args.probe_steps:
    flags.append(f"--steps_per_epoch={args.probe_steps}")
  if args.probe_weight_decays:
    flags += [f"--probe_weight_decays={args.probe_weight_decays}", "--probe_val_fraction=0.1"]
  return flags


def eval_command(args, row, seed):
  workdir = run_dir(args, row, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
          "--protocol=linear", *probe_flags(args, seed),
          f"--output={os.path.join(workdir, 'eval')}"]


# Semi-supervised fine-tuning (`--finetune`): the whole network and a linear classifier on B5,
# on class-balanced subsets of the train labels chosen by the run's seed; one setting for every
# row (not tuned: the same for the rows compared).
FINETUNE_FRACTIONS = ("0.01", "0.1")
FINETUNE_FLAGS = ("--epochs=30", "--batch_size=64", "--learning_rate=0.05",
                  "--lr_schedule=cosine", "--weight_decay=5e-4")


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


def probe_settings(settings):
  """The probe protocol part of a record's settings (absent keys of older records: None)."""
  return {k: settings.get(k) or None for k in PROBE_SETTINGS}


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
  path = os.path.join(stored_dir(args, row, seed), "record.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


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


# ---- tables --------------------------------------------------------------------------------

def load_records(results, task, tag="", probes=None, arch=None):
  """Every stored record of `task` with variant `tag` (and, if given, probed with the
  `probes` settings: a table never mixes probe protocols), in a stable order. The untrained
  network's records (no variant) belong to every variant's table, for the seeds its trained
  rows have: the floor is the initialisation of the same seeds."""
  records = []
  for path in sorted(glob.glob(os.path.join(results, task, "*", "record.json"))):
    with open(path) as f:
      record = json.load(f)
    variant = record.get("tag", "")
    if not record.get("probes") or (variant != tag and record.get("row") != RANDOM):
      continue
    if probes is not None and probe_settings(record["settings"]) != probes:
      print(f"reproduce: {path} was probed with other settings; left out of the table")
      continue
    if arch is not None and any(record["settings"].get(k) != v for k, v in arch.items()):
      continue  # another backbone or image size: never in one table
    records.append(record)
  seeds = {r["seed"] for r in records if r["row"] != RANDOM}
  return [r for r in records if r["row"] != RANDOM or r["seed"] in seeds]


def mean_spread(values):
  """(mean, sample standard deviation or None for one value)."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = statistics.fmean(values)
  return mean, (statistics.stdev(values) if len(values) > 1 else None)


def fmt(mean, spread, digits=1):
  if mean is None:
    return "–"
  return f"{mean:.{digits}f}" if spread is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _pct(value):
  return None if value is None else 100.0 * value


def aggregate(records):
  """{row: {block: (mean, sd), ...}} over seeds, rows in the table order."""
  by_row = {}
  for r in records:
    by_row.setdefault(r.get("row", r.get("mode")), []).append(r)
  out = {}
  for row in [r for r in ROWS if r in by_row] + [r for r in by_row if r not in ROWS]:
    rs = sorted(by_row[row], key=lambda r: r["seed"])
    entry = {b: mean_spread([r["probes"].get(b, {}).get("top1") for r in rs]) for b in BLOCKS}
    entry["best"] = mean_spread([max((r["probes"].get(b, {}).get("top1") or 0.0)
                                     for b in BLOCKS) for r in rs])
    entry["train_wall_s"] = mean_spread([r.get("train_wall_s") for r in rs])
    entry["pretext_accuracy"] = mean_spread([_pct(r.get("pretext_accuracy")) for r in rs])
    entry["heldout_accuracy"] = mean_spread([_pct(r.get("heldout_accuracy")) for r in rs])
    entry["training_tflops"] = mean_spread([r.get("training_tflops") for r in rs])
    entry["epochs_per_stage"] = rs[0].get("epochs_per_stage")
    entry["seeds"] = [r["seed"] for r in rs]
    entry["values"] = {b: [r["probes"].get(b, {}).get("top1") for r in rs] for b in BLOCKS}
    if all(r.get("knn") for r in rs):
      entry["knn"] = {b: mean_spread([r["knn"].get(b, {}).get("top1") for r in rs])
                      for b in BLOCKS}
      entry["knn"]["best"] = mean_spread([max((r["knn"].get(b, {}).get("top1") or 0.0)
                                               for b in BLOCKS) for r in rs])
    for fraction in FINETUNE_FRACTIONS:
      column = f"{100 * float(fraction):g}%"
      if all((r.get("finetune") or {}).get(column) for r in rs):
        entry[f"finetune_{column}"] = mean_spread([r["finetune"][column]["top1"] for r in rs])
    out[row] = entry
  return out


def difference(table, a, b, block):
  """(mean of a − mean of b, standard error of that difference or None) at `block`."""
  (ma, sa), (mb, sb) = table[a][block], table[b][block]
  if ma is None or mb is None:
    return None, None
  na, nb = len(table[a]["seeds"]), len(table[b]["seeds"])
  if sa is None or sb is None:
    return ma - mb, None
  return ma - mb, math.sqrt(sa ** 2 / na + sb ** 2 / nb)


def welch_p(table, a, b, block):
  """Two-sided p-value of Welch's t-test of a's seeds against b's at `block` (from the means,
  sample sds and seed counts), or None when either row has fewer than two seeds."""
  (ma, sa), (mb, sb) = table[a][block], table[b][block]
  na, nb = len(table[a]["seeds"]), len(table[b]["seeds"])
  if None in (ma, mb, sa, sb) or na < 2 or nb < 2:
    return None
  if sa == 0 and sb == 0:
    return 1.0 if ma == mb else 0.0
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return float(stats.ttest_ind_from_stats(ma, sa, na, mb, sb, nb, equal_var=False).pvalue)


def format_p(p):
  """'p = 0.03', 'p < 0.001'."""
  return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def difference_cell(table, a, b, block):
  """One table cell: mean of a − mean of b at `block`, ± the standard error of the difference
  when both rows have several seeds; when one row has a single seed, the difference is placed
  against the other row's seed spread (inside or outside that row's mean ± 2 sd)."""
  d, se = difference(table, a, b, block)
  if d is None:
    return "–"
  mark = ""
  if se:
    mark = " (outside 2 SE" if abs(d) > 2 * se else " (within 2 SE"
    p = welch_p(table, a, b, block)
    mark += (f", {format_p(p)})" if p is not None else ")")
  else:
    for single, other in ((a, b), (b, a)):
      sd = table[other][block][1]
      if len(table[single]["seeds"]) == 1 and sd:
        where = "outside" if abs(d) > 2 * sd else "within"
        mark = f" ({where} {other} mean ± 2 sd)"
        break
  return f"{d:+.1f}" + (f" ± {se:.1f}" if se else "") + mark


def comparisons(table):
  """Lines comparing the rows a reader of the paper asks about, block by block."""
  pairs = [("psl", "e2e", "equal images"),
           ("psl", "e2e_at_psl", "equal images vs e2e at equal compute"),
           ("psl", "sl", "the ladder vs the hardest level"),
           ("psl", "psl_f", "stop-gradient vs full gradients"),
           ("psl_paper", "e2e_matched", "paper's protocol vs e2e at equal compute"),
           ("psl_paper", "e2e", "paper's protocol vs e2e at equal epochs per stage"),
           ("e2e", RANDOM, "what e2e pre-training adds"),
           ("psl", RANDOM, "what PSL pre-training adds")]
  lines = []
  for a, b, what in pairs:
    if a not in table or b not in table:
      continue
    cells = [difference_cell(table, a, b, block) for block in BLOCKS + ("best",)]
    lines.append(f"| {a} − {b} | {what} | " + " | ".join(cells) + " |")
  if not lines:
    return []
  return (["| Difference | question | B1 | B2 | B3 | B4 | B5 | best block |",
           "|---|---|---:|---:|---:|---:|---:|---:|"] + lines)


def variant_comparison(table, base_table, tag, base_tag=""):
  """Lines comparing each row of a variant (`tag`) with the same row of its base (the base
  campaign, or the variant `base_tag`):
  variant − base per block, ± the standard error of the difference when both have several
  seeds; a single seed of either is instead placed against the other's seed spread (inside or
  outside mean ± 2 sd)."""
  lines = []
  for row in [r for r in table if r in base_table and r != RANDOM]:
    merged = {"variant": table[row], "base": base_table[row]}
    cells = [difference_cell(merged, "variant", "base", block)
             for block in BLOCKS + ("best",)]
    seeds = (",".join(map(str, table[row]["seeds"])) + " vs " +
             ",".join(map(str, base_table[row]["seeds"])))
    lines.append(f"| {row}{tag} − {row}{base_tag} | {seeds} | " + " | ".join(cells) + " |")
  if not lines:
    return []
  return (["| Difference | seeds | B1 | B2 | B3 | B4 | B5 | best block |",
           "|---|---|---:|---:|---:|---:|---:|---:|"] + lines)


def markdown(args, records, table, base_table=None):
  """The results as Markdown: mean ± sd table, differences, per-seed table, settings."""
  lines = [f"### {args.task}: linear probes, top-1 % on the test split (mean ± sample sd "
           "over seeds)", "",
           "| Row | seeds | epochs/stage | B1 | B2 | B3 | B4 | B5 | held-out pretext acc. "
           "(last stage) | train pretext acc. | training TFLOPs | train wall s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for row, entry in table.items():
    cells = [fmt(*entry[b]) for b in BLOCKS]
    seeds = ",".join(map(str, entry["seeds"]))
    lines.append(f"| {row} | {seeds} | {entry['epochs_per_stage'] or '–'} | " +
                 " | ".join(cells) + f" | {fmt(*entry['heldout_accuracy'])} | "
                 f"{fmt(*entry['pretext_accuracy'])} | {fmt(*entry['training_tflops'])} | "
                 f"{fmt(*entry['train_wall_s'], digits=0)} |")
  knn_rows = {row: entry["knn"] for row, entry in table.items() if "knn" in entry}
  if knn_rows:
    lines += ["", "Weighted kNN (k = 200, T = 0.07, globally pooled features), top-1 % on the "
              "test split:", "", "| Row | seeds | B1 | B2 | B3 | B4 | B5 | best block |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row, knn in knn_rows.items():
      lines.append(f"| {row} | {','.join(map(str, table[row]['seeds']))} | " +
                   " | ".join(fmt(*knn[b]) for b in BLOCKS + ("best",)) + " |")
  tuned = [(row, entry) for row, entry in table.items()
           if any(k.startswith("finetune_") for k in entry)]
  if tuned:
    columns = [f"{100 * float(f):g}%" for f in FINETUNE_FRACTIONS]
    lines += ["", "Semi-supervised: the whole network fine-tuned on class-balanced subsets of "
              "the train labels (subset chosen by the run's seed; "
              f"{' '.join(FINETUNE_FLAGS)}), top-1 % on the test split:", "",
              "| Row | seeds | " + " | ".join(f"{c} labels" for c in columns) + " |",
              "|---|---|" + "---:|" * len(columns)]
    for row, entry in tuned:
      lines.append(f"| {row} | {','.join(map(str, entry['seeds']))} | " +
                   " | ".join(fmt(*entry.get(f"finetune_{c}", (None, None))) for c in columns)
                   + " |")
  diff = comparisons(table)
  if diff:
    lines += ["", "Differences of the means (± standard error of the difference, "
              "sqrt(sd_a²/n_a + sd_b²/n_b); p: two-sided Welch t-test over seeds):", "",
              *diff]
  against_base = variant_comparison(table, base_table or {}, args.tag, args.base_tag)
  if against_base:
    base = (f"the variant {' '.join(args.base_extra)}" if args.base_extra
            else "the base campaign")
    lines += ["", f"The variant ({' '.join(args.extra) or args.tag}) against the same rows "
              f"of {base} (stored runs):", "", *against_base]
  lines += ["", "Per seed (held-out pretext accuracy of every stage, %):", "",
            "| Run | B1 | B2 | B3 | B4 | B5 | held-out per stage | train wall s |",
            "|---|---:|---:|---:|---:|---:|---|---:|"]
  for r in sorted(records, key=lambda r: (list(ROWS).index(r["row"]) if r["row"] in ROWS
                                          else 99, r["seed"])):
    cells = [fmt(r["probes"].get(b, {}).get("top1"), None) for b in BLOCKS]
    heldout = "/".join("–" if a is None else f"{100 * a:.1f}"
                       for a in r.get("stage_heldout_accuracy") or [])
    lines.append(f"| {r['row']} s{r['seed']} | " + " | ".join(cells) +
                 f" | {heldout or '–'} | {r.get('train_wall_s', 0):.0f} |")
  s = records[0]["settings"] if records else {k: getattr(args, k) for k in SETTINGS}
  decay = (f"chosen per block among {s['probe_weight_decays']} on 10 % of train held out"
           if s.get("probe_weight_decays") else "5e-4")
  lines += ["", f"Settings: preset {records[0]['preset'] if records else args.preset}, "
            f"cifar_resnet depth {s['depth']} width {s['width']}, {s['image_size']} px, batch "
            f"{s['batch_size']}, {s['steps_per_epoch']} steps per epoch, E = "
            f"{s['stage_epochs']} epochs per stage for the equal-images rows (e2e {3 * s['stage_epochs']}), "
            f"probes: {s['probe_epochs']} epochs on {s['probe_inputs']}, batch "
            f"{s['probe_batch_size']}, lr {s['probe_learning_rate']}, weight decay {decay}; "
            "extra flags: "
            f"{' '.join(args.extra) or 'none'}.", ""]
  return "\n".join(lines)


def plot(table, path, title):
  """Accuracy per block, one line per row with sd error bars, the random floor dashed."""
  from psl_tf.evaluation import report  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  def result(entry):
    return {b: {"top1": entry[b][0], **({"top1_sd": entry[b][1]} if entry[b][1] else {})}
            for b in BLOCKS if entry[b][0] is not None}
  rows = [(f"{row} (n={len(entry['seeds'])})", result(entry))
          for row, entry in table.items() if row != RANDOM]
  floor = None
  if RANDOM in table:
    floor = (f"{RANDOM} (n={len(table[RANDOM]['seeds'])})", result(table[RANDOM]))
  return report.plot(rows, path, "top1", title, floor)


def write_results(args, records=None):
  """Writes results.md/.json/.png under <results>/<task>/ from the stored records."""
  if records is None:
    records = load_records(args.results, args.task, args.tag, probe_settings(vars(args)),
                           {k: getattr(args, k) for k in ARCH})
  out_dir = os.path.join(args.results, args.task)
  os.makedirs(out_dir, exist_ok=True)
  table = aggregate(records)
  base_table = None
  if args.tag:
    base_table = aggregate(load_records(args.results, args.task, args.base_tag,
                                        probe_settings(vars(args)),
                                        {k: getattr(args, k) for k in ARCH}))
  text = markdown(args, records, table, base_table)
  stem = f"results{args.tag}"
  with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
    json.dump({"table": table, "runs": [r["row"] + f"_s{r['seed']}" for r in records]}, f,
              indent=2, sort_keys=True)
  if table:
    plot(table, os.path.join(out_dir, f"{stem}.png"),
         f"{args.task}: linear probes per block (mean ± sd over seeds)")
  return text


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
