r"""What each stage does to the blocks below it: linear probes after every stage of a run.

  python scripts/probe_stages.py --results=docs/results/cifar10/rotation \
      --root=/work/runs/campaign/rotation --runs=psl_headgrid4_s0,psl_headgrid4_s1 \
      --stages=1,2

A stored campaign run (`scripts/reproduce.py`) is probed with the final stage's weights only.
This probes the weights each earlier stage left (`psl_tf.evaluate --stage=k`, the run's own
probe command otherwise: same protocol, seed and weight-decay choice), so the table shows
whether a later stage, re-training the blocks it shares with the stage below, improves or
erodes them. Needs the runs' work directories (`--root`, the pre-trained weights) beside their
stored records (`--results`); each stage's probe JSON is kept in the stored run's folder as
`probes_stage<k>.json` (a few kB), so the table can be rebuilt with `--phase=table` from the
repository alone.
"""

import argparse
import glob
import json
import os
import shlex
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position

BLOCKS = reproduce.BLOCKS


def stage_probe_path(results, run, stage):
  return os.path.join(results, run, f"probes_stage{stage}.json")


def probe_stage(results, root, run, stage):
  """Probes stage `stage`'s weights of `run` with the run's own probe command."""
  with open(os.path.join(results, run, "record.json")) as f:
    record = json.load(f)
  workdir = os.path.join(root, run)
  if not os.path.isdir(os.path.join(workdir, f"stage_{stage}")):
    raise SystemExit(f"probe_stages: {workdir} has no stage_{stage}/ (work directory gone?)")
  output = os.path.join(workdir, f"eval_stage{stage}")
  cmd = [a for a in shlex.split(record["eval_command"])
         if not a.startswith(("--workdir=", "--output="))]
  cmd[0] = sys.executable
  cmd += [f"--workdir={workdir}", f"--output={output}", f"--stage={stage}"]
  print(f"probe_stages: {run} stage {stage}", flush=True)
  reproduce._run(cmd, os.path.join(workdir, "reproduce.log"))  # pylint: disable=protected-access
  # psl_tf.evaluate keeps each run's own result in <workdir>/eval/ (the report goes to output).
  hits = glob.glob(os.path.join(workdir, "eval", f"linear_*_stage{stage}.json"))
  if not hits:
    raise SystemExit(f"probe_stages: no probe JSON for stage {stage} under {workdir}/eval")
  with open(max(hits, key=os.path.getmtime)) as f:
    probes = json.load(f)
  with open(stage_probe_path(results, run, stage), "w") as f:
    json.dump(probes, f, indent=2, sort_keys=True)


def top1(results, run, stage):
  """{block: top-1} after `stage` (the last stage's from the stored record), or None."""
  path = stage_probe_path(results, run, stage)
  if not os.path.exists(path):
    path = os.path.join(results, run, "probes.json")  # the stored run's own: its last stage
  with open(path) as f:
    probes = json.load(f)
  if probes.get("stage") != stage:
    return None
  return {b: v["top1"] for b, v in probes["results"].items() if b in BLOCKS}


def table(results, runs, stages):
  """Markdown: one row per run and stage, then the mean ± sd over the runs per stage."""
  lines = ["| run | weights after | " + " | ".join(b.upper() for b in BLOCKS) + " |",
           "|---|---|" + "---:|" * len(BLOCKS)]
  per_stage = {}
  for run in runs:
    for stage in stages:
      got = top1(results, run, stage)
      if got is None:
        continue
      per_stage.setdefault(stage, []).append(got)
      lines.append(f"| {run} | stage {stage} | " +
                   " | ".join(f"{got[b]:.1f}" if b in got else "–" for b in BLOCKS) + " |")
  for stage, rows in sorted(per_stage.items()):
    cells = []
    for b in BLOCKS:
      values = [r[b] for r in rows if b in r]
      if len(values) > 1:
        cells.append(f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}")
      else:
        cells.append(f"{values[0]:.1f}" if values else "–")
    runs_text = f"{len(rows)} run" + ("s" if len(rows) > 1 else "")
    lines.append(f"| mean ± sd ({runs_text}) | stage {stage} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--results", required=True, help="a task's stored runs, e.g. "
                      "docs/results/cifar10/rotation")
  parser.add_argument("--root", default=None, help="the runs' work directories (for probing)")
  parser.add_argument("--runs", required=True, help="comma-separated stored run names")
  parser.add_argument("--stages", default="1,2", help="stages to probe (the last one is "
                      "read from the stored record)")
  parser.add_argument("--phase", default="all", choices=("all", "table"))
  args = parser.parse_args(argv)
  runs = [r for r in args.runs.split(",") if r]
  stages = [int(s) for s in args.stages.split(",") if s]
  if args.phase == "all":
    if not args.root:
      parser.error("--root (the work directories) is needed to probe; --phase=table reads "
                   "the stored probes only")
    for run in runs:
      for stage in stages:
        if not os.path.exists(stage_probe_path(args.results, run, stage)):
          probe_stage(args.results, args.root, run, stage)
  with open(os.path.join(args.results, runs[0], "probes.json")) as f:
    last = json.load(f)["stage"]  # the stored probes are the last stage's
  print(table(args.results, runs, sorted(set(stages) | {last})))


if __name__ == "__main__":
  main()
