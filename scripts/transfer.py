r"""Transfer: the campaign's linear probes on another data set than the runs were pre-trained on.

  pip install -r requirements-reproduce.txt          # scikit-learn, scipy
  python scripts/make_digits_folder.py /tmp/digits   # a no-op when /tmp/digits holds them
  python scripts/transfer.py --data=/tmp/digits --records=docs/results/cifar10/rotation \
      /work/runs/campaign/rotation/{psl,e2e_at_psl}_semisup_s{0,1,2}
  python scripts/transfer.py --phase=table     # results.md from the stored results only

The second command, run from the repository root, is the one to repeat as the campaign's
seeds finish: it probes what is new (finished, with a campaign record) and rebuilds the table.

For every run directory given (a `psl_tf.train` work directory, only read) and, per seed, the
untrained network (the floor: the run's backbone built from its own flags with that seed, the
initialisation its pre-training started from), this trains linear probes on the frozen blocks
B1..B5 on the training split of `--data` and scores them on its test split, each as one
`python -m psl_tf.evaluate --protocol=transfer --dataset=folder:DATA --write_to_runs=false`
process with the probe flags of `scripts/reproduce.py --preset=cifar10` (features probes, 15
epochs, batch 256, lr 0.01, each block's weight decay chosen among 5e-4,5e-3,5e-2,5e-1 on a
held-out 10 % of the training split; the probe seed is the run's seed). Nothing is written into
the run directories: the untrained networks and the evaluate outputs go to `--scratch`.

Each result is stored as `<results>/<run name>.json` (a few kB, never weights); a run stored
with the same probe settings and data is skipped, so the same command, re-run when more seeds
have finished, probes only what is new. A run whose last stage has not finished yet is skipped
with a note (with `--records=DIR`, also one whose campaign record `DIR/<run name>/record.json`
is not there yet). The table `<results>/results.md` (and `results.png`) is rebuilt from every
stored result: mean ± sd over seeds at B1..B5 and the best block, then the differences of the
means with Welch's p (`scripts/reproduce.py`'s helpers). Run names follow the campaign's:
`<row><tag>_s<seed>`, e.g. `e2e_at_psl_semisup_s1`.
"""

import argparse
import glob
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = reproduce.REPO
RANDOM = reproduce.RANDOM
BLOCKS = reproduce.BLOCKS
TRAINED_ROWS = [r for r in reproduce.ROWS if r != RANDOM]
# The differences the table reports: (a, b, question), a row name of each.
PAIRS = (("psl", "e2e_at_psl", "PSL vs e2e at equal compute"),
         ("psl", RANDOM, "what PSL pre-training adds"),
         ("e2e_at_psl", RANDOM, "what e2e pre-training at PSL's compute adds"),
         ("psl", "e2e", "PSL vs e2e at equal images"),
         ("e2e", RANDOM, "what e2e pre-training adds"))


def parse_run_name(name):
  """(row, tag, seed) of a campaign run name `<row><tag>_s<seed>`, e.g. ('e2e_at_psl',
  '_semisup', 1); the longest row name that fits wins. ValueError if none does."""
  stem, _, seed = name.rpartition("_s")
  if not stem or not seed.isdigit():
    raise ValueError(f"{name} is not a campaign run name (<row><tag>_s<seed>)")
  for row in sorted(reproduce.ROWS, key=len, reverse=True):
    if stem == row or stem.startswith(row + "_"):
      return row, stem[len(row):], int(seed)
  raise ValueError(f"{name} starts with no row of scripts/reproduce.py "
                   f"({', '.join(reproduce.ROWS)})")


def probe_args(preset):
  """The preset's probe settings (reproduce.PROBE_SETTINGS) as an argparse-like namespace."""
  values = {k: reproduce.PRESETS[preset].get(k) for k in reproduce.PROBE_SETTINGS}
  return argparse.Namespace(**values)


def data_manifest(data):
  """The folder's manifest.json (scripts/make_digits_folder.py) or its image counts."""
  path = os.path.join(data, "manifest.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"counts": {split: len(glob.glob(os.path.join(data, split, "*", "*")))
                     for split in ("train", "test")}}


def stored(results, name):
  path = os.path.join(results, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def expected_stages(mode):
  return reproduce.STAGES_PER_MODE.get(mode, 3)


def write_untrained_run(run_flags, seed, path):
  """A work directory at `path` holding the untrained backbone that a run with `run_flags`
  and `seed` starts from, as its finished stage 1 (what reproduce.write_random_run does for
  the campaign's floor, here for the backbone the flags name)."""
  import keras  # pylint: disable=g-import-not-at-top  (TensorFlow only where needed)
  from psl_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  flags = dict(run_flags, seed=str(seed), mode="e2e", workdir=path)
  config = config_lib.from_flags(flags)
  keras.utils.set_random_seed(seed)  # as psl_tf.pretraining.run right before building it
  backbone = models.build_backbone(config.backbone, **config.backbone_kwargs())
  wd.write_flags(path, flags)
  wd.write_summary(path, {"mode": RANDOM, "stages": [
      {"stage": 1, "wall_time_s": 0.0, "pretext_accuracy": None}]})
  wd.save_backbone_weights(backbone, wd.stage_weights_path(path, 1))


def transfer_command(workdir, data, seed, output, preset):
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
          "--protocol=transfer", f"--dataset=folder:{os.path.abspath(data)}",
          *reproduce.probe_flags(probe_args(preset), seed), "--write_to_runs=false",
          f"--output={output}"]


def probe_one(args, name, workdir, record, log=print):
  """Runs the transfer probes of the run in `workdir` and stores `record` + its results."""
  output = os.path.join(args.scratch, "eval", name)
  cmd = transfer_command(workdir, args.data, record["seed"], output, args.preset)
  log(f"-- transfer probes for {name} ({workdir})")
  os.makedirs(args.scratch, exist_ok=True)
  record["process_s"] = round(reproduce._run(  # pylint: disable=protected-access
      cmd, os.path.join(args.scratch, f"{name}.log")), 1)
  found = sorted(glob.glob(os.path.join(output, "transfer_*.json")))
  if not found:
    raise RuntimeError(f"psl_tf.evaluate left no transfer_*.json in {output}")
  with open(found[-1]) as f:
    report = json.load(f)
  record.update({"command": shlex.join(cmd), "code_version": reproduce.code_version(),
                 "evaluate_settings": report["settings"],
                 "probes": {b: v for b, v in report["rows"][0]["results"].items()
                            if b in BLOCKS}})
  os.makedirs(args.results, exist_ok=True)
  with open(os.path.join(args.results, f"{name}.json"), "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  log(f"-- {name} stored in {args.results}")
  return record


def up_to_date(args, name, want):
  """True if `name` is stored with the probe settings and data `want` holds."""
  got = stored(args.results, name)
  return got is not None and got.get("probes") and all(got.get(k) == want[k]
                                                       for k in ("settings", "data"))


def run_all(args, log=print):
  """Probes every finished run given and each seed's untrained network; skips what is stored."""
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  want = {"settings": vars(probe_args(args.preset)), "data": data_manifest(args.data)}
  floors = {}  # random run name -> (seed, the flags of a trained run of that seed)
  for workdir in args.runs:
    workdir = os.path.abspath(workdir.rstrip("/"))
    name = os.path.basename(workdir)
    row, tag, seed = parse_run_name(name)
    if row == RANDOM:
      raise SystemExit(f"transfer: {workdir}: the untrained floor is built here for every "
                       "seed; give trained runs only")
    flags = wd.read_flags(workdir)
    if flags is None:
      log(f"-- {name}: no flags.txt in {workdir} (not started yet?), skipped")
      continue
    done = wd.finished_stages(workdir)
    stages = expected_stages(flags.get("mode"))
    if len(done) < stages:
      log(f"-- {name}: {len(done)} of {stages} stages finished in {workdir}, skipped for now")
      continue
    arch = argparse.Namespace(preset=args.preset, depth=int(flags.get("depth", 0)),
                              width=int(flags.get("width", 0)),
                              image_size=int(flags.get("image_size", 0)))
    floors.setdefault(f"{RANDOM}{reproduce.arch_suffix(arch)}_s{seed}", (seed, flags))
    if int(flags.get("seed", -1)) != seed:
      raise SystemExit(f"transfer: {workdir} was trained with --seed={flags.get('seed')}, "
                       f"its name says seed {seed}")
    if up_to_date(args, name, want):
      log(f"-- {name}: stored in {args.results}, skipped")
      continue
    if args.records and not os.path.exists(os.path.join(args.records, name, "record.json")):
      log(f"-- {name}: no campaign record in {args.records}/{name} yet, skipped for now")
      continue
    record = {"run": name, "row": row, "tag": tag, "seed": seed, "workdir": workdir,
              "stage": done[-1], "task": flags.get("task"), "mode": flags.get("mode"), **want}
    probe_one(args, name, workdir, record, log)
  for name, (seed, flags) in sorted(floors.items()):
    if up_to_date(args, name, want):
      log(f"-- {name}: stored in {args.results}, skipped")
      continue
    path = os.path.join(args.scratch, "runs", name)
    if not wd.finished_stages(path):
      write_untrained_run(flags, seed, path)
    record = {"run": name, "row": RANDOM, "tag": "", "seed": seed,
              "workdir": "(untrained initialisation of the backbone the runs' flags name, "
                         f"seed {seed})", "stage": 1, "task": flags.get("task"),
              "mode": RANDOM, **want}
    probe_one(args, name, path, record, log)


# ---- the table -----------------------------------------------------------------------------

def load_results(results, settings, data=None):
  """Every stored transfer result probed with `settings` (and on `data`, a manifest, if
  given), untrained floors only for the seeds that trained rows have; in table order. A table
  never mixes probe settings or data sets."""
  records = []
  for path in sorted(glob.glob(os.path.join(results, "*.json"))):
    with open(path) as f:
      record = json.load(f)
    if record.get("probes") and "row" in record:
      records.append(record)
  kept = [r for r in records if r["settings"] == settings and (data is None or
                                                               r["data"] == data)]
  for r in records:
    if r not in kept:
      print(f"transfer: {r['run']} was probed with other settings or data; left out")
  if len({json.dumps(r["data"], sort_keys=True) for r in kept}) > 1:
    raise SystemExit(f"transfer: the results in {results} come from several data folders; "
                     "pass --data to tabulate one")
  seeds = {r["seed"] for r in kept if r["row"] != RANDOM}
  kept = [r for r in kept if r["row"] != RANDOM or r["seed"] in seeds]
  order = list(reproduce.ROWS)
  return sorted(kept, key=lambda r: (order.index(r["row"]) if r["row"] in order else 99,
                                     r.get("tag", ""), r["seed"]))


def labelled(records):
  """The records with `row` set to the table's row label: the row name, with the variant tag
  when the trained runs come from several variants."""
  tags = {r.get("tag", "") for r in records if r["row"] != RANDOM}
  out = []
  for r in records:
    label = r["row"] + (r.get("tag", "") if len(tags) > 1 else "")
    out.append({**r, "row": label})
  return out, tags


def markdown(records):
  """results.md: per-row means, the differences, the per-seed values, the settings."""
  rows, tags = labelled(records)
  table = reproduce.aggregate(rows)
  data = records[0]["data"]
  counts = {s: sum(c.values()) if isinstance(c, dict) else c
            for s, c in data.get("counts", {}).items()}
  source = data.get("source", "an image folder")
  lines = [f"### Transfer to {source}: linear probes on the frozen blocks, top-1 % on its test "
           f"split ({counts.get('test', '?')} images; probes trained on "
           f"{counts.get('train', '?')}), mean ± sample sd over seeds", ""]
  if len(tags) == 1 and next(iter(tags)):
    lines += [f"Trained runs: the campaign variant `{next(iter(tags))[1:]}` (rows psl and "
              f"e2e_at_psl are `{next(iter(tags))[1:]}` runs).", ""]
  lines += ["| Row | seeds | B1 | B2 | B3 | B4 | B5 | best block |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
  for row, entry in table.items():
    cells = [reproduce.fmt(*entry[b]) for b in (*BLOCKS, "best")]
    lines.append(f"| {row} | {','.join(map(str, entry['seeds']))} | " + " | ".join(cells) + " |")
  diffs = []
  for tag in sorted(tags):
    suffix = tag if len(tags) > 1 else ""
    for a, b, question in PAIRS:
      a_label = a + suffix
      b_label = b if b == RANDOM else b + suffix
      if a_label in table and b_label in table:
        cells = [reproduce.difference_cell(table, a_label, b_label, blk)
                 for blk in (*BLOCKS, "best")]
        diffs.append(f"| {a_label} − {b_label} | {question} | " + " | ".join(cells) + " |")
  if diffs:
    lines += ["", "Differences of the means (± standard error of the difference, sqrt(sd_a²/n_a "
              "+ sd_b²/n_b); p: two-sided Welch t-test over seeds; one seed: the difference "
              "alone):", "", "| Difference | question | B1 | B2 | B3 | B4 | B5 | best block |",
              "|---|---|---:|---:|---:|---:|---:|---:|", *diffs]
  lines += ["", "Per run (top-1 %; in brackets the weight decay each block's probe chose on "
            "the held-out 10 % of the training split):", "",
            "| Run | B1 | B2 | B3 | B4 | B5 |", "|---|---:|---:|---:|---:|---:|"]
  for r in records:
    cells = []
    for b in BLOCKS:
      cell = r["probes"].get(b, {})
      wd_text = f" ({cell['weight_decay']:g})" if "weight_decay" in cell else ""
      cells.append(f"{cell['top1']:.1f}{wd_text}" if "top1" in cell else "–")
    lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
  s = records[0]["settings"]
  lines += ["", f"Settings: the probes of scripts/reproduce.py --preset=cifar10: "
            f"{s['probe_epochs']} epochs on stored centre-crop features, batch "
            f"{s['probe_batch_size']}, lr {s['probe_learning_rate']}, weight decay chosen per "
            f"block among {s['probe_weight_decays']} on 10 % of the training split held out; "
            "the probe seed is the run's seed; the untrained floor of seed s is the backbone "
            "built from the runs' flags with seed s. Data: "
            + ", ".join(f"{k} {v}" for k, v in sorted(data.items())
                        if k not in ("counts", "source")) + "."]
  return "\n".join(lines) + "\n", table


def write_table(args):
  """Writes results.md and results.png from the stored results; returns the markdown."""
  records = load_results(args.results, vars(probe_args(args.preset)),
                         data_manifest(args.data) if args.data else None)
  if not records:
    print(f"transfer: no stored results in {args.results}")
    return ""
  text, table = markdown(records)
  with open(os.path.join(args.results, "results.md"), "w") as f:
    f.write(text)
  reproduce.plot(table, os.path.join(args.results, "results.png"),
                 "transfer: linear probes per block (mean ± sd over seeds)")
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="*", help="work directories of pre-training runs (only "
                      "read), named as the campaign's: <row><tag>_s<seed>")
  parser.add_argument("--data", default=None, help="image folder with train/<class>/ and "
                      "test/<class>/ (scripts/make_digits_folder.py writes one)")
  parser.add_argument("--results", default=os.path.join(
      REPO, "docs", "results", "cifar10", "transfer_digits"),
                      help="where each run's small result JSON and results.md go")
  parser.add_argument("--scratch", default="/tmp/psl_transfer", help="where the untrained "
                      "networks, the evaluate outputs and the logs go")
  parser.add_argument("--preset", default="cifar10", choices=sorted(reproduce.PRESETS),
                      help="scripts/reproduce.py preset whose probe settings are used")
  parser.add_argument("--records", default=None, help="a campaign task's stored records (e.g. "
                      "docs/results/cifar10/rotation): probe a run only once its record is "
                      "there (its training and the campaign's own probes are over)")
  parser.add_argument("--phase", default="all", choices=("all", "table"),
                      help="all: probe what is missing, then the table; table: table only")
  args = parser.parse_args(argv)
  if args.phase == "all":
    if not args.data:
      parser.error("--data is required to probe (only --phase=table works without it)")
    for sub in ("train", "test"):
      if not os.path.isdir(os.path.join(args.data, sub)):
        parser.error(f"{args.data} has no {sub}/ sub-folder; pass an image tree with "
                     "train/<class>/ and test/<class>/")
    if not args.runs:
      parser.error("give the work directories of the runs to transfer")
    start = time.time()
    run_all(args)
    print(f"transfer: {time.time() - start:.0f} s")
  text = write_table(args)
  print(text)


if __name__ == "__main__":
  main()
