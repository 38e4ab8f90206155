"""Stored records: finding an experiment's, checking they ran its config, migrating old ones,
and aggregating them over seeds.

A finished run keeps `<results>/<task>/<run name>/record.json` (its probes, costs, commands).
Records written before run ids existed get theirs at load time from the training command they
store (`base.record_run_id`), so un-migrated records load as migrated ones do; `migrate` writes
the id (and the experiment's name) into them for good.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import re
import statistics
from typing import Any, Callable, Iterable, Mapping, Sequence

from psl_tf.experiments import base
from psl_tf.experiments.base import BLOCKS, RANDOM, ROWS, Experiment


class RecordMismatch(ValueError):
  """A stored record under an experiment's label ran another config."""


def read(path: str) -> dict[str, Any]:
  with open(path) as f:
    return dict(json.load(f))


def check(path: str, record: Mapping[str, Any], experiment: Experiment,
          expected: Callable[[str], str]) -> None:
  """Raises RecordMismatch naming `path` when the record's run id (stored, or from its training
  command) is not the id `expected(row)` of `experiment`'s row; a hand-made record that keeps
  neither is taken as labelled."""
  got = base.record_run_id(record)
  if got is None:
    return
  want = expected(record["row"])
  if got != want:
    raise RecordMismatch(
        f"{path}: the stored run {got} is not row {record['row']} of experiment "
        f"{experiment.name} ({want}): its flags differ from the experiment's config "
        f"(train command: {record.get('train_command', '(none)')})")


def load_records(results: str, experiment: Experiment, probes: Mapping[str, Any] | None = None,
                 arch: Mapping[str, Any] | None = None,
                 expected: Callable[[str], str] | None = None,
                 log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
  """Every stored record of `experiment` (its label; if given, probed with the `probes`
  settings: a table never mixes probe protocols; of the backbone `arch`), in a stable order,
  each checked against `expected(row)` (its row's run id) when that is given. The untrained
  network's records (no variant) belong to every experiment's table, for the seeds its trained
  rows have: the floor is the initialisation of the same seeds."""
  records = []
  for path in sorted(glob.glob(os.path.join(results, experiment.task, "*", "record.json"))):
    record = read(path)
    variant = record.get("tag", "")
    if not record.get("probes") or (variant != experiment.label and
                                    record.get("row") != RANDOM):
      continue
    if probes is not None and base.probe_settings(record["settings"]) != probes:
      log(f"reproduce: {path} was probed with other settings; left out of the table")
      continue
    if arch is not None and any(record["settings"].get(k) != v for k, v in arch.items()):
      continue  # another backbone or image size: never in one table
    if expected is not None:
      check(path, record, experiment, expected)
    records.append(record)
  seeds = {r["seed"] for r in records if r["row"] != RANDOM}
  return [r for r in records if r["row"] != RANDOM or r["seed"] in seeds]


def locate(path: str, experiments: Iterable[Experiment], preset: str = "cifar10"
           ) -> tuple[Experiment, str, int]:
  """(experiment, row, seed) of the stored record at `<results>/<task>/<run name>/record.json`,
  from its directory label; ValueError when no experiment of its task, or several, have it."""
  folder = os.path.dirname(os.path.abspath(path))
  name, task = os.path.basename(folder), os.path.basename(os.path.dirname(folder))
  found = []
  for experiment in experiments:
    if experiment.task != task:
      continue
    settings = base.resolve_settings(preset, experiment)
    for row in ROWS:
      stem = base.run_name(experiment, row, 0, preset, settings)[:-len("_s0")]
      match = re.fullmatch(re.escape(stem) + r"_s(\d+)", name)
      if match:
        found.append((experiment, row, int(match.group(1))))
  # The untrained network is every experiment's floor: the first experiment of its backbone.
  untrained = [f for f in found if f[1] == RANDOM]
  if untrained:
    found = [f for f in found if f[1] != RANDOM] + untrained[:1]
  if len(found) != 1:
    what = ", ".join(f"{e.name}/{r}" for e, r, _ in found) or "none"
    raise ValueError(f"{path}: {len(found)} experiment rows have this run's label ({what})")
  return found[0]


def migrate(results: str, experiments: Sequence[Experiment],
            expected: Callable[[Experiment, str], str], write: bool = True,
            preset: str = "cifar10") -> list[tuple[str, str]]:
  """Gives every record under `<results>/<task>/*/` its run id and its experiment's name
  (`expected(experiment, row)` is the row's run id): computed from the record's training
  command, checked against its experiment's, written into the record (when `write`). Records
  that have them are left as they are; a mismatch raises RecordMismatch naming the record.
  Returns (path, "migrated" | "current") per record."""
  out = []
  for path in sorted(glob.glob(os.path.join(results, "*", "*", "record.json"))):
    record = read(path)
    experiment, row, seed = locate(path, experiments, preset)
    if record.get("row") != row or record.get("seed") != seed:
      raise RecordMismatch(f"{path}: the record says row {record.get('row')} seed "
                           f"{record.get('seed')}, its label row {row} seed {seed}")
    check(path, record, experiment, functools.partial(expected, experiment))
    name = {} if row == RANDOM else {"experiment": experiment.name}
    if record.get("run_id") and all(record.get(k) == v for k, v in name.items()):
      out.append((path, "current"))
      continue
    run_id = base.record_run_id(record)
    if run_id is None:
      raise RecordMismatch(f"{path}: keeps no training command to identify it by")
    record["run_id"] = run_id
    record.update(name)
    if write:
      with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    out.append((path, "migrated"))
  return out


# ---- aggregation ---------------------------------------------------------------------------

def mean_spread(values: Iterable[float | None]) -> tuple[float | None, float | None]:
  """(mean, sample standard deviation or None for one value)."""
  kept = [v for v in values if v is not None]
  if not kept:
    return None, None
  mean = statistics.fmean(kept)
  return mean, (statistics.stdev(kept) if len(kept) > 1 else None)


def fmt(mean: float | None, spread: float | None, digits: int = 1) -> str:
  if mean is None:
    return "–"
  return f"{mean:.{digits}f}" if spread is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _pct(value: float | None) -> float | None:
  return None if value is None else 100.0 * value


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """{row: {block: (mean, sd), ...}} over seeds, rows in the table order."""
  by_row: dict[str, list[Mapping[str, Any]]] = {}
  for r in records:
    by_row.setdefault(r.get("row", r.get("mode")), []).append(r)
  out = {}
  for row in [r for r in ROWS if r in by_row] + [r for r in by_row if r not in ROWS]:
    rs = sorted(by_row[row], key=lambda r: r["seed"])
    entry: dict[str, Any] = {
        b: mean_spread([r["probes"].get(b, {}).get("top1") for r in rs]) for b in BLOCKS}
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
      knn = {b: mean_spread([r["knn"].get(b, {}).get("top1") for r in rs]) for b in BLOCKS}
      knn["best"] = mean_spread([max((r["knn"].get(b, {}).get("top1") or 0.0)
                                     for b in BLOCKS) for r in rs])
      entry["knn"] = knn
    for fraction in base.FINETUNE_FRACTIONS:
      column = f"{100 * float(fraction):g}%"
      if all((r.get("finetune") or {}).get(column) for r in rs):
        entry[f"finetune_{column}"] = mean_spread([r["finetune"][column]["top1"] for r in rs])
    out[row] = entry
  return out


def difference(table: Mapping[str, Mapping[str, Any]], a: str, b: str, block: str
               ) -> tuple[float | None, float | None]:
  """(mean of a − mean of b, standard error of that difference or None) at `block`."""
  (ma, sa), (mb, sb) = table[a][block], table[b][block]
  if ma is None or mb is None:
    return None, None
  na, nb = len(table[a]["seeds"]), len(table[b]["seeds"])
  if sa is None or sb is None:
    return ma - mb, None
  return ma - mb, math.sqrt(sa ** 2 / na + sb ** 2 / nb)


def welch_p(table: Mapping[str, Mapping[str, Any]], a: str, b: str, block: str
            ) -> float | None:
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


def format_p(p: float) -> str:
  """'p = 0.03', 'p < 0.001'; three decimals below 0.01 and where two would read as 0.05
  (p = 0.052 is not p < 0.05, and 'p = 0.05' would hide on which side it falls)."""
  if p < 0.001:
    return "p < 0.001"
  two = f"{p:.2f}"
  return f"p = {p:.3f}" if p < 0.01 or two == "0.05" else f"p = {two}"
