"""The tables of an experiment: Markdown (mean ± sd per row and block, the differences a reader
of the paper asks about, the variant against its base, every seed), JSON and a plot, built from
the stored records alone (`records.load_records`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from psl_tf.experiments import base
from psl_tf.experiments.base import BLOCKS, RANDOM, ROWS
from psl_tf.experiments.records import aggregate, difference, fmt, format_p, welch_p

Table = Mapping[str, Mapping[str, Any]]


def difference_cell(table: Table, a: str, b: str, block: str) -> str:
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


def comparisons(table: Table) -> list[str]:
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


def variant_comparison(table: Table, base_table: Table, tag: str, base_tag: str = ""
                       ) -> list[str]:
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


def markdown(task: str, records: Sequence[Mapping[str, Any]], table: Table,
             base_table: Table | None = None, *, tag: str = "", extra: Sequence[str] = (),
             base_tag: str = "", base_extra: Sequence[str] = (), preset: str = "",
             settings: Mapping[str, Any] | None = None) -> str:
  """The results as Markdown: mean ± sd table, differences, per-seed table, settings. `tag`
  and `extra` name the experiment (its label and flags), `base_tag` and `base_extra` the one
  its rows are compared with in `base_table`; `preset` and `settings` are said when no record
  says them."""
  lines = [f"### {task}: linear probes, top-1 % on the test split (mean ± sample sd "
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
                 f"{fmt(entry['train_wall_s'][0], entry['train_wall_s'][1], digits=0)} |")
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
  # The untrained floor is fine-tuned for the experiments that fine-tune; in another
  # experiment's table it alone would be a section comparing nothing.
  if any(row != RANDOM for row, _ in tuned):
    columns = [f"{100 * float(f):g}%" for f in base.FINETUNE_FRACTIONS]
    lines += ["", "Semi-supervised: the whole network fine-tuned on class-balanced subsets of "
              "the train labels (subset chosen by the run's seed; "
              f"{' '.join(base.FINETUNE_FLAGS)}), top-1 % on the test split:", "",
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
  against_base = variant_comparison(table, base_table or {}, tag, base_tag)
  if against_base:
    compared = (f"the variant {' '.join(base_extra)}" if base_extra
                else "the base campaign")
    lines += ["", f"The variant ({' '.join(extra) or tag}) against the same rows "
              f"of {compared} (stored runs):", "", *against_base]
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
  s = records[0]["settings"] if records else dict(settings or {})
  decay = (f"chosen per block among {s['probe_weight_decays']} on 10 % of train held out"
           if s.get("probe_weight_decays") else "5e-4")
  lines += ["", f"Settings: preset {records[0]['preset'] if records else preset}, "
            f"cifar_resnet depth {s['depth']} width {s['width']}, {s['image_size']} px, batch "
            f"{s['batch_size']}, {s['steps_per_epoch']} steps per epoch, E = "
            f"{s['stage_epochs']} epochs per stage for the equal-images rows (e2e {3 * s['stage_epochs']}), "
            f"probes: {s['probe_epochs']} epochs on {s['probe_inputs']}, batch "
            f"{s['probe_batch_size']}, lr {s['probe_learning_rate']}, weight decay {decay}; "
            "extra flags: "
            f"{' '.join(extra) or 'none'}.", ""]
  return "\n".join(lines)


def plot(table: Table, path: str, title: str) -> Any:
  """Accuracy per block, one line per row with sd error bars, the random floor dashed."""
  from psl_tf.evaluation import report  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  def result(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {b: {"top1": entry[b][0], **({"top1_sd": entry[b][1]} if entry[b][1] else {})}
            for b in BLOCKS if entry[b][0] is not None}
  rows = [(f"{row} (n={len(entry['seeds'])})", result(entry))
          for row, entry in table.items() if row != RANDOM]
  floor = None
  if RANDOM in table:
    floor = (f"{RANDOM} (n={len(table[RANDOM]['seeds'])})", result(table[RANDOM]))
  return report.plot(rows, path, "top1", title, floor)


def write(out_dir: str, task: str, records: Sequence[Mapping[str, Any]],
          base_records: Sequence[Mapping[str, Any]] | None = None, *, tag: str = "",
          extra: Sequence[str] = (), base_tag: str = "", base_extra: Sequence[str] = (),
          preset: str = "", settings: Mapping[str, Any] | None = None) -> str:
  """Writes results<tag>.md/.json/.png of `records` into `out_dir` (`base_records`: the rows
  the experiment is compared with, None for the default experiment); returns the Markdown."""
  os.makedirs(out_dir, exist_ok=True)
  table = aggregate(records)
  base_table = None if base_records is None else aggregate(base_records)
  text = markdown(task, records, table, base_table, tag=tag, extra=extra, base_tag=base_tag,
                  base_extra=base_extra, preset=preset, settings=settings)
  stem = f"results{tag}"
  with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
    json.dump({"table": table, "runs": [r["row"] + f"_s{r['seed']}" for r in records]}, f,
              indent=2, sort_keys=True)
  if table:
    plot(table, os.path.join(out_dir, f"{stem}.png"),
         f"{task}: linear probes per block (mean ± sd over seeds)")
  return text


def stored(results: str, experiment: base.Experiment) -> dict[str, Any]:
  """The table `write` stored for `experiment` (`<results>/<task>/results<label>.json`), {} when
  there is none yet."""
  path = os.path.join(results, experiment.task, f"results{experiment.label}.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return dict(json.load(f)["table"])
