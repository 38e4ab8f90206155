"""The campaign's answer: per budget, PSL's row minus the other row at the best block, for every
task; and the ablation table (each change's effect, and PSL's gap to e2e at equal compute with
the change made). Rows are named by experiment (`cifar10` variants), never by run-name text;
the numbers come from each experiment's stored table. `scripts/campaign_answer.py` prints them
and writes them between the `<!-- campaign-answer -->` / `<!-- campaign-ablations -->` markers
of docs/RESULTS.md, and the short table (the main budgets) between README.md's
`<!-- campaign-answer-brief -->` markers.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from psl_tf.experiments import base
from psl_tf.experiments import cifar10
from psl_tf.experiments import records
from psl_tf.experiments import tables
from psl_tf.experiments.cifar10 import (COSINE, DEFAULT, EPOCHS_357, EPOCHS_753, FROZEN_BN,
                                        GRID, GRID_COSINE, LINEAR_HEADS, ONE_COSINE,
                                        ONE_COSINE_DEFAULT_HEADS, ONE_SCHEDULE, PAPER_LARS,
                                        PAPER_SPLIT, PERMS_2000, SEMI, TILES_2X, WIDTH_32)

Table = Mapping[str, Mapping[str, Any]]
BEGIN, END = "<!-- campaign-answer -->", "<!-- /campaign-answer -->"
TASKS = base.TASKS
ABLATION_TASKS = ("rotation", "jigsaw")  # the ablations were run on these only

# The README's short table (the lines marked `brief`) between these markers; RESULTS has all.
BRIEF_BEGIN, BRIEF_END = "<!-- campaign-answer-brief -->", "<!-- /campaign-answer-brief -->"


class Line(NamedTuple):
  """One line of the answer: row `a` of variant `tag_a` minus row `b` of variant `tag_b` at
  `block`; a variant names each task's experiment of it (`cifar10.variant_of`; DEFAULT: the
  default recipe, default heads); `{...}` in `what` is filled from the tables. `brief`: also
  in the README's short table."""
  tag_a: str
  a: str
  tag_b: str
  b: str
  what: str
  block: str = "best"
  brief: bool = False


ABLATIONS_BEGIN, ABLATIONS_END = "<!-- campaign-ablations -->", "<!-- /campaign-ablations -->"
STORED_TABLE = re.compile(r"(<!-- stored-table: (\S+) -->\n)(.*?)(<!-- /stored-table -->)",
                          re.DOTALL)
# The semi-supervised runs (SEMI): the winning rotation recipe retrained with its weights kept
# for fine-tuning.
LINES = (
    Line(DEFAULT, "psl", DEFAULT, "e2e",
         "equal images (PSL at {psl_cost} of e2e's compute), default heads",
         brief=True),
    Line(GRID, "psl", GRID, "e2e", "equal images, heads on a 4×4 grid (`--head_grid=4`)"),
    Line(DEFAULT, "psl", DEFAULT, "e2e_at_psl",
         "equal compute (e2e for PSL's FLOPs, {e2e_at_psl_epochs} epochs), default heads",
         brief=True),
    Line(GRID, "psl", GRID, "e2e_at_psl", "equal compute, grid heads"),
    Line(ONE_SCHEDULE, "psl", GRID, "e2e", "equal images, grid heads, PSL's stages on one "
         "learning-rate schedule (`--lr_restart=false`)"),
    Line(ONE_SCHEDULE, "psl", GRID, "e2e_at_psl", "equal compute, grid heads, PSL on one schedule"),
    Line(ONE_SCHEDULE, "psl", GRID_COSINE, "e2e_at_psl",
         "equal compute, grid heads, PSL on one step schedule, e2e on a cosine schedule "
         "(`--lr_schedule=cosine`) instead of the preset's steps"),
    Line(ONE_COSINE, "psl", GRID_COSINE, "e2e_at_psl",
         "equal compute, grid heads, both on a cosine schedule (PSL's over its whole run)",
         brief=True),
    Line(ONE_COSINE, "psl", GRID_COSINE, "e2e",
         "equal images, grid heads, both on a cosine schedule (PSL's over its whole run)",
         brief=True),
    Line(ONE_COSINE_DEFAULT_HEADS, "psl", COSINE, "e2e_at_psl",
         "equal compute, default heads, both on a cosine schedule (PSL's over its whole run)"),
    Line(WIDTH_32, "psl", WIDTH_32, "e2e_at_psl",
         "equal compute, both on a cosine schedule, grid heads, at width 32 (4× the FLOPs)",
         brief=True),
    Line(TILES_2X, "psl", TILES_2X, "e2e_at_psl", "equal compute, jigsaw tiles cut from the image "
         "upsampled 2× (a puzzle B3 cannot solve inside one tile), grid heads, cosine"),
    Line(TILES_2X, "e2e_at_psl", TILES_2X, "random",
         "what e2e_at_psl learnt on the 2× tiles: − the untrained network"),
    Line(PERMS_2000, "psl", PERMS_2000, "e2e_at_psl", "equal compute, jigsaw with the paper's "
         "500/1000/2000 permutations at 32 px, grid heads, cosine"),
    Line(PERMS_2000, "e2e_at_psl", PERMS_2000, "random",
         "what e2e_at_psl learnt with 2000 permutations: − the untrained network"),
    Line(PAPER_LARS, "psl", PAPER_LARS, "e2e", "equal images under the paper's SimCLR protocol "
         "(LARS, stages 4,5,6 of the 15 epochs, one cosine decay, warm-up)"),
    Line(PAPER_LARS, "psl", PAPER_LARS, "e2e_at_psl",
         "equal compute under the paper's SimCLR protocol (e2e with LARS, 10 epochs)", brief=True),
    Line(PAPER_LARS, "e2e", PAPER_LARS, "random",
         "what e2e learnt under the paper's SimCLR protocol: − the untrained network"),
    Line(PAPER_LARS, "psl", PAPER_LARS, "random",
         "what PSL learnt under the paper's SimCLR protocol: − the untrained network"),
    Line(PAPER_SPLIT, "psl", DEFAULT, "e2e", "equal images, MoCo v2 under the paper's protocol "
         "(stages 4,5,6 of the 15 epochs; MoCo v2's SGD on one cosine decay, as every MoCo v2 "
         "row)"),
    Line(PAPER_SPLIT, "psl", DEFAULT, "e2e_at_psl", "equal compute, MoCo v2 under the paper's "
         "protocol (e2e 10 epochs: 94 % of PSL's compute at 4,5,6)", brief=True),
    Line(PAPER_SPLIT, "psl", DEFAULT, "random",
         "what PSL learnt, MoCo v2 under the paper's protocol: − the untrained network"),
    Line(DEFAULT, "psl_paper", DEFAULT, "e2e", "the paper's protocol (each stage as long as e2e: "
         "{paper_cost} e2e's compute) vs e2e"),
    Line(DEFAULT, "psl_paper", DEFAULT, "e2e_matched",
         "the paper's protocol vs e2e at its compute ({e2e_matched_epochs} epochs)", brief=True),
    Line(DEFAULT, "psl", DEFAULT, "psl_f", "PSL vs PSL_f, full gradients (the paper: equal)"),
    Line(DEFAULT, "psl", DEFAULT, "sl", "PSL vs SL, the hardest level only (the paper: PSL ahead)"),
    Line(SEMI, "psl", SEMI, "e2e_at_psl", "semi-supervised, 1 % of the labels: fine-tuned, "
         "grid heads, both on cosine, equal compute", "finetune_1%", brief=True),
    Line(SEMI, "psl", SEMI, "e2e_at_psl", "semi-supervised, 10 % of the labels (as above)",
         "finetune_10%", brief=True),
    Line(SEMI, "e2e_at_psl", SEMI, "random", "semi-supervised, 1 % of the labels: e2e_at_psl − "
         "training from scratch", "finetune_1%"),
    Line(SEMI, "e2e_at_psl", SEMI, "random", "semi-supervised, 10 % of the labels: e2e_at_psl − "
         "training from scratch", "finetune_10%"),
    Line(DEFAULT, "e2e", DEFAULT, "random", "what e2e learnt: e2e − the untrained network",
         brief=True),
    Line(DEFAULT, "psl", DEFAULT, "random", "what PSL learnt: psl − the untrained network",
         brief=True),
)


# Issue item 6, "which change moves the gap and by how much": (the change, its effect as
# (variant, row) with − (variant, row) without it, and PSL's gap to e2e at equal compute once
# the change is made, as (variant, row) − (variant, row)).
ABLATIONS = (
    ("heads keep a 4×4 grid (`--head_grid=4`, psl and e2e alike)",
     (GRID, "psl"), (DEFAULT, "psl"), (GRID, "psl"), (GRID, "e2e_at_psl")),
    ("psl's stages on one learning-rate schedule (`--lr_restart=false`), on the grid heads",
     (ONE_SCHEDULE, "psl"), (GRID, "psl"), (ONE_SCHEDULE, "psl"), (GRID, "e2e_at_psl")),
    ("psl on one cosine schedule instead of restarted steps, against e2e_at_psl on cosine, "
     "default heads",
     (ONE_COSINE_DEFAULT_HEADS, "psl"), (DEFAULT, "psl"),
     (ONE_COSINE_DEFAULT_HEADS, "psl"), (COSINE, "e2e_at_psl")),
    ("frozen blocks normalised with batch statistics (`--frozen_bn=batch_stats`), grid heads",
     (FROZEN_BN, "psl"), (GRID, "psl"),
     (FROZEN_BN, "psl"), (GRID, "e2e_at_psl")),
    ("the 15 epochs weighted 3,5,7 over the stages (`--epochs=3,5,7`), grid heads",
     (EPOCHS_357, "psl"), (GRID, "psl"), (EPOCHS_357, "psl"),
     (GRID, "e2e_at_psl")),
    ("the 15 epochs weighted 7,5,3 (`--epochs=7,5,3`), grid heads",
     (EPOCHS_753, "psl"), (GRID, "psl"), (EPOCHS_753, "psl"),
     (GRID, "e2e_at_psl")),
    ("psl's heads without the hidden layer (`--head_hidden=0`; e2e_at_psl keeps its), grid heads",
     (LINEAR_HEADS, "psl"), (GRID, "psl"), (LINEAR_HEADS, "psl"),
     (GRID, "e2e_at_psl")),
    ("control: e2e_at_psl on a cosine schedule (`--lr_schedule=cosine`) instead of steps, "
     "against one-schedule psl, grid heads",
     (GRID_COSINE, "e2e_at_psl"), (GRID, "e2e_at_psl"), (ONE_SCHEDULE, "psl"),
     (GRID_COSINE, "e2e_at_psl")),
    ("one-schedule psl on cosine instead of steps, against e2e_at_psl on cosine, grid heads",
     (ONE_COSINE, "psl"), (ONE_SCHEDULE, "psl"), (ONE_COSINE, "psl"),
     (GRID_COSINE, "e2e_at_psl")),
)


def load_table(results: str, task: str, variant: str) -> dict[str, Any]:
  """The stored table (`results<label>.json`, as `reproduce.py --phase=table` writes it) of
  `task`'s experiment of `variant`; {} when the campaign has no such experiment or it has no
  table yet."""
  experiment = cifar10.variant_of(task, variant)
  if experiment is None:
    return {}
  return tables.stored(results, experiment)


# A difference is a finding (bold) only with this many seeds in each row and p below ALPHA;
# a row with fewer seeds makes the line preliminary.
MIN_SEEDS, ALPHA = 3, 0.05


def cell(table_a: Table, a: str, table_b: Table, b: str, block: str = "best") -> str:
  """'**+2.5 ± 0.5** (4+4, p = 0.004)': the difference of the seed means at `block` ± its
  standard error, the seed counts and the two-sided Welch t-test's p; bold only with at least
  MIN_SEEDS seeds in each row and p < ALPHA; 'preliminary' when a row has fewer seeds."""
  if a not in table_a or b not in table_b:
    return "–"
  pair = {"a": table_a[a], "b": table_b[b]}
  d, se = records.difference(pair, "a", "b", block)
  if d is None:
    return "–"
  na, nb = len(pair["a"]["seeds"]), len(pair["b"]["seeds"])
  text = f"{d:+.1f}".replace("-", "−")
  notes = [f"{na}+{nb}"]
  p = records.welch_p(pair, "a", "b", block)
  if se is not None:
    text += f" ± {se:.1f}"
  if p is not None:
    notes.append(records.format_p(p))
  if min(na, nb) < MIN_SEEDS:
    notes.append("preliminary")
  elif p is not None and p < ALPHA:
    text = f"**{text}**"
  return f"{text} ({', '.join(notes)})"


def budget_facts(tables: Iterable[Table]) -> dict[str, str]:
  """The numbers the budget descriptions quote, from the first table that has the rows."""
  facts = {"psl_cost": "?", "paper_cost": "?", "e2e_at_psl_epochs": "?",
           "e2e_matched_epochs": "?"}
  for table in tables:
    cost = {row: entry["training_tflops"][0] for row, entry in table.items()}
    if "psl" in cost and "e2e" in cost and facts["psl_cost"] == "?":
      facts["psl_cost"] = f"{100 * cost['psl'] / cost['e2e']:.0f} %"
    if "psl_paper" in cost and "e2e" in cost and facts["paper_cost"] == "?":
      facts["paper_cost"] = f"{cost['psl_paper'] / cost['e2e']:.1f}×"
    for row in ("e2e_at_psl", "e2e_matched"):
      if row in table and facts[f"{row}_epochs"] == "?":
        facts[f"{row}_epochs"] = str(table[row]["epochs_per_stage"])
  return facts


def answer(results: str, tasks: Sequence[str], brief: bool = False) -> list[str]:
  """The Markdown table (list of lines); `brief`: only the lines marked brief (the README's)."""
  tags = {line.tag_a for line in LINES} | {line.tag_b for line in LINES}
  loaded = {(task, tag): load_table(results, task, tag) for task in tasks for tag in tags}
  facts = budget_facts(t for (_, tag), t in loaded.items() if tag == DEFAULT)
  lines = ["| Budget (best block, first row − second) | " + " | ".join(tasks) + " |",
           "|---|" + "---:|" * len(tasks)]
  for line in LINES:
    if brief and not line.brief:
      continue
    cells = [cell(loaded[(task, line.tag_a)], line.a, loaded[(task, line.tag_b)], line.b,
                  line.block) for task in tasks]
    if all(c == "–" for c in cells):
      continue
    lines.append(f"| `{line.a}` − `{line.b}`: {line.what.format(**facts)} | "
                 + " | ".join(cells) + " |")
  lines += ["", "Linear-probe top-1 % on CIFAR-10's test split at each run's best block "
            "(semi-supervised lines: top-1 % of the fine-tuned network), "
            "difference of the seed means ± its standard error; (n+m) seeds, p of a two-sided "
            f"Welch t-test; **bold**: ≥ {MIN_SEEDS} seeds a row and p < {ALPHA}; preliminary: "
            f"a row has fewer than {MIN_SEEDS} seeds; –: not run yet."]
  if any(task in base.CONTRASTIVE for task in tasks):
    lines[-1] += (" SimCLR and MoCo v2: every row on one cosine decay over its whole run "
                  "(PSL's stages continue it), global-pooling projection heads; the "
                  "rotation/jigsaw \"default heads\" wording does not apply to them.")
  if brief:
    lines[-1] += (" The main budgets only; every budget, the jigsaw variants and the ablations: "
                  "[`docs/RESULTS.md`](docs/RESULTS.md).")
  return lines


def ablations(results: str, tasks: Sequence[str]) -> list[str]:
  """The ablation table (list of lines): per change and task, the change's effect on its row's
  best block, and PSL's best-block gap to e2e at equal compute with the change made."""
  tags = {pair[0] for line in ABLATIONS for pair in line[1:]} | {DEFAULT}
  loaded = {(task, tag): load_table(results, task, tag) for task in tasks for tag in tags}
  lines = ["| Change | " + " | ".join(f"{task}: with − without | {task}: PSL − e2e_at_psl "
                                        "with it" for task in tasks) + " |",
           "|---|" + "---:|---:|" * len(tasks)]
  for what, (ta, a), (tb, b), (tc, c), (td, d) in ABLATIONS:
    cells = []
    for task in tasks:
      cells += [cell(loaded[(task, ta)], a, loaded[(task, tb)], b),
                cell(loaded[(task, tc)], c, loaded[(task, td)], d)]
    if all(c == "–" for c in cells):
      continue
    lines.append(f"| {what} | " + " | ".join(cells) + " |")
  default = ", ".join(
      f"{cell(loaded[(task, '')], 'psl', loaded[(task, '')], 'e2e_at_psl')} on {task}"
      for task in tasks)
  lines += ["", "Best block, difference of the seed means ± its standard error; (n+m) seeds; "
            f"p of a two-sided Welch t-test; **bold**: ≥ {MIN_SEEDS} seeds a row and p < {ALPHA}; "
            "–: not run yet. With none of the changes "
            f"(default heads, schedule restarted per stage) PSL − e2e_at_psl is {default}."]
  return lines


def update(path: str, lines: Sequence[str], begin: str = BEGIN, end_marker: str = END) -> bool:
  """Rewrites the block between the markers of `path`; returns True if it changed."""
  with open(path) as f:
    text = f.read()
  start, end = text.find(begin), text.find(end_marker)
  if start < 0 or end < start:
    raise SystemExit(f"campaign_answer: {path} has no {begin} ... {end_marker} block")
  new = text[:start] + begin + "\n" + "\n".join(lines) + "\n" + text[end:]
  if new != text:
    with open(path, "w") as f:
      f.write(new)
  return new != text


def stored_table(results: str, name: str) -> list[str]:
  """The lines of the stored table `<results>/<name>` without its Markdown headings."""
  path = os.path.join(results, name)
  if not os.path.exists(path):
    raise SystemExit(f"campaign_answer: no stored table {path} (reproduce.py --phase=table "
                     "writes it)")
  with open(path) as f:
    lines = [line.rstrip("\n") for line in f if not line.startswith("#")]
  while lines and not lines[0].strip():
    lines.pop(0)
  while lines and not lines[-1].strip():
    lines.pop()
  return lines


def update_stored_tables(path: str, results: str) -> int:
  """Copies every `<!-- stored-table: NAME -->` block of `path` from the stored table NAME;
  returns the number of blocks that changed."""
  with open(path) as f:
    text = f.read()
  changed = 0

  def copy(match: re.Match[str]) -> str:
    nonlocal changed
    body = "\n".join(stored_table(results, match.group(2))) + "\n"
    changed += body != match.group(3)
    return match.group(1) + body + match.group(4)

  new = STORED_TABLE.sub(copy, text)
  if new != text:
    with open(path, "w") as f:
      f.write(new)
  return changed


