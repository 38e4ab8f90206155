r"""The campaign's answer in one table: does PSL beat e2e, under which budget, by how much.

  python scripts/campaign_answer.py [--results=docs/results/cifar10] [--tasks=rotation,jigsaw]
  python scripts/campaign_answer.py --update README.md docs/RESULTS.md

A thin driver over `psl_tf.experiments.answer`: reads the tables `scripts/reproduce.py
--phase=table` stored for each experiment of the campaign (`psl_tf/experiments/cifar10.py`)
under `<results>/<task>/` and prints, per budget, the best-block difference of PSL's row minus
the other row, ± the standard error of the difference, for every task. `--update FILE...`
rewrites the table between the `<!-- campaign-answer -->` and `<!-- /campaign-answer -->`
markers of each file, and its short form (the main budgets) between the README's
`<!-- campaign-answer-brief -->` markers, so the README and RESULTS never carry hand-copied numbers
(tests/campaign_answer_test.py checks they are current). The ablation table (issue item 6: each
change's effect on its row's best block, and PSL's gap to e2e at equal compute with the change
made) is printed after it and written between `<!-- campaign-ablations -->` markers where a file
has them. A task's full table (`reproduce.py --phase=table`'s `results*.md`) is copied between
`<!-- stored-table: <task>/results*.md -->` and `<!-- /stored-table -->` markers, heading left
out, so RESULTS can show it in place without a hand-copied number.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
from psl_tf.experiments.answer import (ABLATION_TASKS, ABLATIONS, ABLATIONS_BEGIN,
                                       ABLATIONS_END, BEGIN, BRIEF_BEGIN, BRIEF_END, END, LINES,
                                       STORED_TABLE, TASKS, ablations, answer, stored_table,
                                       update, update_stored_tables)
# pylint: enable=g-import-not-at-top,wrong-import-position,unused-import

DEFAULT_RESULTS = os.path.join(REPO, "docs", "results", "cifar10")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--results", default=DEFAULT_RESULTS)
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--update", nargs="*", default=None, metavar="FILE",
                      help="rewrite the marked table of these Markdown files")
  args = parser.parse_args(argv)
  tasks = tuple(t for t in args.tasks.split(",") if t)
  lines = answer(args.results, tasks)
  table = ablations(args.results, [t for t in tasks if t in ABLATION_TASKS])
  if args.update is None:
    print("\n".join(lines + [""] + table))
  brief = answer(args.results, tasks, brief=True)
  blocks = ((BEGIN, END, lines, ""), (BRIEF_BEGIN, BRIEF_END, brief, " short table"),
            (ABLATIONS_BEGIN, ABLATIONS_END, table, " ablations"))
  for path in args.update or []:
    with open(path) as f:
      text = f.read()
    present = [block for block in blocks if block[0] in text]
    if not present:
      raise SystemExit(f"campaign_answer: {path} has none of the markers "
                       f"{', '.join(block[0] for block in blocks)}")
    for begin, end, block_lines, what in present:
      changed = update(path, block_lines, begin, end)
      print(f"campaign_answer: {path}{what} {'updated' if changed else 'already current'}")
    changed = update_stored_tables(path, args.results)
    if changed:
      print(f"campaign_answer: {path} {changed} stored table(s) updated")


if __name__ == "__main__":
  main()
