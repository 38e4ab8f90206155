r"""Reproduces the paper's PSL-vs-baselines comparison (Tables 5/6 layout) on an image folder.

  python scripts/reproduce.py --task=rotation --data=/tmp/cifar10 --seeds=0,1
  python scripts/reproduce.py --task=jigsaw --data=/tmp/cifar10 --budget=small \
      --root=/tmp/repro --extra=--frozen_bn=batch_stats

For one task, pre-trains every mode (`psl`, `sl`, `psl_f`, `e2e`, `greedy`) and every seed
with a small `cifar_resnet`, each as its own `python -m psl_tf.train` process (memory is
returned between runs, and a run interrupted by a kill resumes from its work directory when the
script is started again; finished runs are skipped). Then every run's frozen blocks B1..B5 are
probed with linear classifiers (`python -m psl_tf.evaluate`, trained on the labelled train
split, scored on the test split), and the script writes into `<root>/<task>/`:

* `results.md`: top-1 per block (with a `random` row: the untrained initialisation of each
  seed, probed the same way, to show what pre-training added), mean ± sample standard deviation over seeds (one row per
  mode), the per-seed rows, and the wall time of each mode;
* `results.json`: the same numbers, the settings, and the exact commands;
* `results.png`: top-1 per block, one line per mode (seed means).

Equal epochs: every PSL-style stage (psl, sl, psl_f and greedy have three) gets
`--stage_epochs` epochs, and `e2e` gets three times that in its single stage, so every mode sees
the same number of training images (the paper's "equal epochs" for a three-stage method against
an end-to-end one). Each stage, and the e2e stage, has its own step learning-rate schedule
over its own length (the paper's 20/20/10/10 split).

The data folder needs `train/<class>/*.jpg` and `test/<class>/*.jpg` (or .png).
"""

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MODES = ("psl", "sl", "psl_f", "e2e", "greedy")
# Not a training mode: the untrained backbone (the very initialisation every run of the same
# seed starts from), probed the same way, so the table shows what pre-training added at all.
RANDOM = "random"
BLOCKS = ("b1", "b2", "b3", "b4", "b5")

# Budgets for CIFAR-10-sized images on a 2-core CPU. `small` trains each of the 5 modes for
# 600 steps of 128 images (about 1.5 passes over CIFAR-10 train in all); about 25 minutes per
# seed for all five modes of rotation, probes included, on a quiet machine.
BUDGETS = {
    "tiny": {"depth": 10, "width": 8, "image_size": 32, "batch_size": 16, "stage_epochs": 1,
             "steps_per_epoch": 2, "probe_epochs": 1, "probe_steps": 2, "probe_batch_size": 16},
    "small": {"depth": 10, "width": 16, "image_size": 32, "batch_size": 128, "stage_epochs": 2,
              "steps_per_epoch": 100, "probe_epochs": 2, "probe_steps": 150,
              "probe_batch_size": 128},
    "medium": {"depth": 10, "width": 16, "image_size": 32, "batch_size": 128,
               "stage_epochs": 4, "steps_per_epoch": 100, "probe_epochs": 3,
               "probe_steps": 200, "probe_batch_size": 128},
}

# Pre-training settings shared by every mode (the CIFAR-10 flagfiles' optimiser).
COMMON_TRAIN_FLAGS = ("--backbone=cifar_resnet", "--optimizer=sgd", "--learning_rate=0.1",
                      "--momentum=0.9", "--weight_decay=5e-4", "--lr_schedule=step",
                      "--lr_step_split=20,20,10,10", "--image_check=none", "--export=false",
                      "--verbose=2")
STAGES_PER_MODE = {"psl": 3, "sl": 3, "psl_f": 3, "greedy": 3, "e2e": 1, RANDOM: 1}


def parse_args(argv=None):
  """The command line, with a budget preset filled in where no explicit flag was given."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--task", default="rotation", help="rotation, jigsaw or simclr")
  parser.add_argument("--data", required=True, help="image-folder tree with train/ and test/")
  parser.add_argument("--root", default="runs/reproduce", help="where runs and results go")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1")
  parser.add_argument("--budget", default="small", choices=sorted(BUDGETS))
  for name in ("depth", "width", "image_size", "batch_size", "stage_epochs",
               "steps_per_epoch", "probe_epochs", "probe_steps", "probe_batch_size"):
    parser.add_argument(f"--{name}", type=int, default=None,
                        help="overrides the budget preset")
  parser.add_argument("--probe_learning_rate", type=float, default=0.05)
  parser.add_argument("--random_baseline", action=argparse.BooleanOptionalAction, default=True,
                      help="also probe the untrained backbone of each seed (row 'random')")
  parser.add_argument("--extra", action="append", default=[],
                      help="extra psl_tf.train flag for every run, e.g. "
                      "--extra=--frozen_bn=batch_stats (repeatable); changes the run names")
  parser.add_argument("--tag", default="", help="suffix of the run directories (variants)")
  args = parser.parse_args(argv)
  for name, value in BUDGETS[args.budget].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.extra and not args.tag:
    # Other learning flags need other work directories (a run resumes only with its flags).
    args.tag = "_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", e) for e in args.extra)
  args.modes = [m for m in args.modes.split(",") if m]
  bad = [m for m in args.modes if m not in MODES]
  if bad:
    parser.error(f"unknown mode(s) {','.join(bad)}; known: {','.join(MODES)}")
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
  except ValueError:
    parser.error(f"--seeds takes whole numbers like 0,1, got {args.seeds}")
  if not args.seeds:
    parser.error("--seeds needs at least one seed")
  for sub in ("train", "test"):
    if not os.path.isdir(os.path.join(args.data, sub)):
      parser.error(f"{args.data} has no {sub}/ sub-folder; pass an image tree with "
                   "train/<class>/ and test/<class>/")
  return args


def epochs_of(mode, stage_epochs):
  """Epochs of the mode's run: per stage, or the three stages' total for e2e (equal epochs)."""
  return stage_epochs * 3 if mode == "e2e" else stage_epochs


def task_flags(task):
  """Task settings for 32 px images that keep every task's step cost close to rotation's."""
  if task == "jigsaw":
    # The tiles come from the 32 px image itself (cell 11, tile 9 px: the paper's geometry
    # scaled by 32/224), so nine tiles cost about one 32 px image. The paper's 500/1000/2000
    # classes cannot be learnt in a few hundred steps; 50/100/200 (prefixes of the same
    # greedy maximal-Hamming sequence) keep the ladder's shape at this budget.
    return ["--jigsaw_sizes=50,100,200"]
  if task == "simclr":
    return ["--contrastive_color_strength=0.5", "--simclr_lr_scaling=none"]
  return []


def run_dir(args, mode, seed):
  return os.path.join(args.root, args.task, f"{mode}{args.tag}_s{seed}")


def train_command(args, mode, seed):
  return [sys.executable, "-m", "psl_tf.train", f"--task={args.task}", f"--mode={mode}",
          f"--dataset=folder:{os.path.abspath(args.data)}", f"--depth={args.depth}",
          f"--width={args.width}", f"--image_size={args.image_size}",
          f"--batch_size={args.batch_size}", f"--epochs={epochs_of(mode, args.stage_epochs)}",
          f"--steps_per_epoch={args.steps_per_epoch}", f"--seed={seed}",
          f"--workdir={run_dir(args, mode, seed)}", *COMMON_TRAIN_FLAGS,
          *task_flags(args.task), *args.extra]


def eval_command(args, mode, seed):
  workdir = run_dir(args, mode, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
          "--protocol=linear", f"--epochs={args.probe_epochs}",
          f"--steps_per_epoch={args.probe_steps}", f"--batch_size={args.probe_batch_size}",
          f"--learning_rate={args.probe_learning_rate}", f"--seed={seed}",
          f"--output={os.path.join(workdir, 'eval')}"]


def _finished(workdir, mode):
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  return len(wd.finished_stages(workdir)) >= STAGES_PER_MODE[mode]


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


def _find_probe_json(workdir, mode):
  """The run's own linear-probe JSON from psl_tf.evaluate (its name holds the data path)."""
  eval_dir = os.path.join(workdir, "eval")
  if not os.path.isdir(eval_dir):
    return None
  suffix = f"_stage{STAGES_PER_MODE[mode]}.json"
  hits = sorted(n for n in os.listdir(eval_dir) if n.startswith("linear_") and n.endswith(suffix))
  return os.path.join(eval_dir, hits[-1]) if hits else None


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


def run_one(args, mode, seed, log=print):
  """Pre-trains (or resumes/skips) and probes one run; returns its record."""
  workdir = run_dir(args, mode, seed)
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, "reproduce.log")
  record_path = os.path.join(workdir, "reproduce.json")
  record = {}
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
  record.update({"mode": mode, "seed": seed, "workdir": workdir,
                 "train_command": ("(untrained initialisation)" if mode == RANDOM
                                   else shlex.join(train_command(args, mode, seed))),
                 "eval_command": shlex.join(eval_command(args, mode, seed))})
  if mode == RANDOM:
    if not _finished(workdir, mode):
      write_random_run(args, seed)
  elif not _finished(workdir, mode):
    log(f"-- pre-training {args.task} {mode} seed {seed} ({workdir})")
    record["train_process_s"] = round(_run(train_command(args, mode, seed), log_path), 1)
  else:
    log(f"-- {mode} seed {seed}: pre-training already finished, skipped")
  probe_json = _find_probe_json(workdir, mode)
  if probe_json is None:
    log(f"-- linear probes for {mode} seed {seed}")
    record["probe_process_s"] = round(_run(eval_command(args, mode, seed), log_path), 1)
    probe_json = _find_probe_json(workdir, mode)
  with open(probe_json) as f:
    record["probes"] = {b: v for b, v in json.load(f)["results"].items() if b in BLOCKS}
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  # Training time inside fit (the stages' own clocks), comparable between modes; the process
  # time above adds start-up and model building.
  record["train_wall_s"] = round(sum(s.get("wall_time_s") or 0 for s in summary["stages"]), 1)
  record["pretext_accuracy"] = summary["stages"][-1].get("pretext_accuracy")
  record["stage_pretext_accuracy"] = [s.get("pretext_accuracy") for s in summary["stages"]]
  with open(record_path, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  return record


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


def aggregate(records):
  """{mode: {block: (mean, sd), 'train_wall_s': (mean, sd), ...}} over seeds, modes in order."""
  by_mode = {}
  for r in records:
    by_mode.setdefault(r["mode"], []).append(r)
  out = {}
  order = MODES + (RANDOM,)
  for mode in [m for m in order if m in by_mode] + [m for m in by_mode if m not in order]:
    rs = by_mode[mode]
    row = {b: mean_spread([r["probes"].get(b, {}).get("top1") for r in rs]) for b in BLOCKS}
    row["train_wall_s"] = mean_spread([r.get("train_wall_s") for r in rs])
    row["pretext_accuracy"] = mean_spread([r.get("pretext_accuracy") for r in rs])
    row["seeds"] = [r["seed"] for r in rs]
    out[mode] = row
  return out


def markdown(args, records, table):
  """The results as Markdown: mean ± sd table, per-seed table, wall times, settings."""
  seeds = ",".join(map(str, args.seeds))
  lines = [f"### {args.task}: linear probes, top-1 % on the test split "
           f"(mean ± sd over seeds {seeds})", "",
           "| Method | B1 | B2 | B3 | B4 | B5 | pretext acc. (last stage) | train wall s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for mode, row in table.items():
    cells = [fmt(*row[b]) for b in BLOCKS]
    acc = row["pretext_accuracy"]
    acc_cell = fmt(100 * acc[0], None if acc[1] is None else 100 * acc[1]) if acc[0] is not None else "–"
    lines.append(f"| {mode} | " + " | ".join(cells) + f" | {acc_cell} | "
                 f"{fmt(*row['train_wall_s'], digits=0)} |")
  if "psl" in table and "e2e" in table:
    best = {m: max((row[b][0] or 0.0) for b in BLOCKS) for m, row in table.items()}
    lines += ["", f"Best block, PSL − e2e: {best['psl'] - best['e2e']:+.1f} points "
              f"(psl {best['psl']:.1f}, e2e {best['e2e']:.1f}); B5, PSL − e2e: "
              f"{(table['psl']['b5'][0] or 0) - (table['e2e']['b5'][0] or 0):+.1f}."]
  lines += ["", "Per seed:", "", "| Run | B1 | B2 | B3 | B4 | B5 | train wall s | process s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in records:
    cells = [fmt(r["probes"].get(b, {}).get("top1"), None) for b in BLOCKS]
    proc = (r.get("train_process_s") or 0) + (r.get("probe_process_s") or 0)
    lines.append(f"| {r['mode']} s{r['seed']} | " + " | ".join(cells) +
                 f" | {r.get('train_wall_s', 0):.0f} | {proc:.0f} |")
  lines += ["", f"Settings: budget {args.budget}, cifar_resnet depth {args.depth} width "
            f"{args.width}, {args.image_size} px, batch {args.batch_size}, "
            f"{args.stage_epochs} epochs x {args.steps_per_epoch} steps per stage (e2e: "
            f"{3 * args.stage_epochs} epochs in one stage), probes {args.probe_epochs} x "
            f"{args.probe_steps} steps of {args.probe_batch_size}, probe lr "
            f"{args.probe_learning_rate}; extra flags: {' '.join(args.extra) or 'none'}.", ""]
  return "\n".join(lines)


def write_results(args, records):
  """Writes results.md/.json/.png under <root>/<task>/; returns the Markdown."""
  from psl_tf import report  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  out_dir = os.path.join(args.root, args.task)
  table = aggregate(records)
  text = markdown(args, records, table)
  stem = f"results{args.tag}"
  with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
    json.dump({"settings": {k: v for k, v in vars(args).items()}, "records": records,
               "table": table}, f, indent=2, sort_keys=True)
  def cells(row):
    return {b: {"top1": row[b][0], **({"top1_sd": row[b][1]} if row[b][1] is not None else {})}
            for b in BLOCKS if row[b][0] is not None}
  rows = [(f"{mode} (n={len(row['seeds'])})", cells(row))
          for mode, row in table.items() if mode != RANDOM]
  floor = (RANDOM, cells(table[RANDOM])) if RANDOM in table else None
  report.plot(rows, os.path.join(out_dir, f"{stem}.png"), floor=floor,
              title=f"{args.task}: linear probes per block (seed means)")
  return text


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(os.path.join(args.root, args.task), exist_ok=True)
  start = time.time()
  records = []
  for seed in args.seeds:  # seed-major: a partial run still has every mode of seed 0
    for mode in args.modes + ([RANDOM] if args.random_baseline else []):
      records.append(run_one(args, mode, seed))
  text = write_results(args, records)
  print(text)
  print(f"reproduce: {len(records)} runs in {time.time() - start:.0f} s; wrote "
        f"{os.path.join(args.root, args.task)}/results{args.tag}.md/.json/.png")


if __name__ == "__main__":
  main()
