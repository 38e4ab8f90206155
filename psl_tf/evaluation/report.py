"""Evaluation results as the paper shows them: a table (rows = runs, columns = B1..B5, like
Tables 5 and 6) in Markdown and JSON, and a PNG plot of accuracy per block, one line per run.

A result is ``{column: {metric: value}}`` per run, e.g. ``{"b1": {"top1": 12.3, "top5": 40.1},
...}`` for linear probes, or ``{"1%": {...}, "10%": {...}}`` for fine-tuning.
"""

import json
import os

import tensorflow as tf

COLUMN_TITLES = {"b1": "B1", "b2": "B2", "b3": "B3", "b4": "B4", "b5": "B5"}


def columns_of(rows):
  """Column keys in first-seen order over all rows."""
  seen = []
  for _, result in rows:
    for key in result:
      if key not in seen:
        seen.append(key)
  return seen


def main_metric(rows):
  """'mAP' for multi-label results, else 'top1'."""
  for _, result in rows:
    for cell in result.values():
      return "mAP" if "mAP" in cell else "top1"
  return "top1"


def markdown_table(rows, metric=None, title=""):
  """A Markdown table: one row per (name, result), one column per block (or subset)."""
  metric = metric or main_metric(rows)
  columns = columns_of(rows)
  lines = [f"**{title}** ({metric}, %)", ""] if title else []
  lines.append("| Method | " + " | ".join(COLUMN_TITLES.get(c, c) for c in columns) + " |")
  lines.append("|---|" + "---:|" * len(columns))
  for name, result in rows:
    cells = []
    for c in columns:
      value = result.get(c, {}).get(metric)
      cells.append("–" if value is None else f"{value:.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(rows, path, metric=None, title="", floor=None):
  """A PNG line plot: x = blocks (or subsets), y = `metric`, one line per run.

  Args:
    rows: list of (run name, result). A cell holding `<metric>_sd` next to `<metric>` (a
      mean over seeds) gets an error bar of plus or minus that standard deviation.
    path: the PNG to write.
    metric: what to plot (default: `main_metric(rows)`).
    title: the plot's title.
    floor: optional (name, result) of the untrained network (random initialisation), drawn
      as a dashed grey line: what the probes reach with no pre-training at all.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top  (only the report needs it)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
  draw(axes, rows, metric, title, floor)
  return save_figure(figure, path)


def save_figure(figure, path):
  """Lays out `figure`, writes it to `path` as PNG (any tf.io.gfile path), closes it."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  figure.tight_layout()
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  with tf.io.gfile.GFile(path, "wb") as f:
    figure.savefig(f, format="png")
  plt.close(figure)
  return path


def draw(axes, rows, metric=None, title="", floor=None):
  """Draws `plot`'s lines, error bars, floor and labels on matplotlib `axes`."""
  metric = metric or main_metric(rows + ([floor] if floor else []))
  columns = columns_of(rows + ([floor] if floor else []))
  for name, result in rows:
    xs = [i for i, c in enumerate(columns) if metric in result.get(c, {})]
    ys = [result[columns[i]][metric] for i in xs]
    errors = [result[columns[i]].get(f"{metric}_sd") for i in xs]
    if any(e is not None for e in errors):
      axes.errorbar(xs, ys, yerr=[e or 0.0 for e in errors], marker="o", capsize=3,
                    label=f"{name} (mean ± sd)")
    else:
      axes.plot(xs, ys, marker="o", label=name)
  if floor:
    name, result = floor
    xs = [i for i, c in enumerate(columns) if metric in result.get(c, {})]
    axes.plot(xs, [result[columns[i]][metric] for i in xs], linestyle="--", color="0.5",
              marker=".", label=f"{name} (untrained floor)")
  axes.set_xticks(range(len(columns)))
  axes.set_xticklabels([COLUMN_TITLES.get(c, c) for c in columns])
  is_blocks = all(c in COLUMN_TITLES for c in columns)
  axes.set_xlabel("block of the frozen backbone" if is_blocks else "labelled subset")
  axes.set_ylabel(f"{metric} (%)")
  axes.set_title(title)
  axes.grid(alpha=0.3)
  axes.legend(fontsize="small")


def write_report(out_dir, key, rows, settings=None, title=""):
  """Writes `<key>.md`, `<key>.json` and `<key>.png` into `out_dir`; returns their paths.

  Args:
    out_dir: directory (created if needed).
    key: file stem, e.g. 'linear_demo'.
    rows: list of (run name, result) pairs.
    settings: JSON-serialisable description of the evaluation, stored with the results.
    title: heading of the table and the plot.
  """
  tf.io.gfile.makedirs(out_dir)
  metric = main_metric(rows)
  paths = {"markdown": os.path.join(out_dir, f"{key}.md"),
           "json": os.path.join(out_dir, f"{key}.json"),
           "plot": os.path.join(out_dir, f"{key}.png")}
  with tf.io.gfile.GFile(paths["markdown"], "w") as f:
    f.write(markdown_table(rows, metric, title))
  with tf.io.gfile.GFile(paths["json"], "w") as f:
    json.dump({"title": title, "metric": metric, "settings": settings or {},
               "rows": [{"run": name, "results": result} for name, result in rows]},
              f, indent=2, sort_keys=True)
  plot(rows, paths["plot"], metric, title)
  return paths
