r"""Would the rotation recipe have been chosen without the test split? Ranks the stored
variants by the linear probes' validation accuracy (10 % of CIFAR-10 train, held out from the
probe's training; the images were seen unlabelled in pre-training, as every probe's are) and
prints the test ranking beside it.

  python scripts/recipe_validation.py [--results=docs/results/cifar10] [--task=rotation]

A run's validation score is its best block's best validation accuracy over the probe's weight
decays (the probe protocol picks the weight decay on that split); its test score is the
campaign's "best block" (the best block's test top-1 with the weight decay picked on
validation). Differences between two variants carry the Welch t-test's p over seeds, as in the
campaign answer. Reads only the stored records; nothing is trained or probed.
"""

import argparse
import collections
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def validation_best(record):
  """The best block's validation accuracy (max over blocks of max over weight decays), or None
  when the record's probes kept no validation accuracies."""
  scores = [max(p["val_by_weight_decay"].values()) for p in record["probes"].values()
            if p.get("val_by_weight_decay")]
  return max(scores) if len(scores) == len(record["probes"]) else None


def test_best(record):
  return max(p["top1"] for p in record["probes"].values())


def variants(results, task):
  """{(row, tag): [record, ...]} of every stored trained record of `task` with validation
  accuracies."""
  out = collections.defaultdict(list)
  for path in sorted(glob.glob(os.path.join(results, task, "*", "record.json"))):
    with open(path) as f:
      record = json.load(f)
    if record.get("probes") and validation_best(record) is not None:
      out[(record["row"], record.get("tag", ""))].append(record)
  return out


def _entry(records, score):
  values = [score(r) for r in records]
  return {"best": list(reproduce.mean_spread(values)), "seeds": [r["seed"] for r in records]}


def ranking(groups, row):
  """[(tag, validation entry, test entry)] of `row`'s variants, best validation mean first."""
  out = [(tag, _entry(rs, validation_best), _entry(rs, test_best))
         for (r, tag), rs in groups.items() if r == row]
  return sorted(out, key=lambda item: -item[1]["best"][0])


def compare(groups, a, b):
  """Lines: a − b on validation and on test (difference ± SE, seeds, Welch p)."""
  lines = []
  for name, score in (("validation", validation_best), ("test", test_best)):
    pair = {"a": _entry(groups[a], score), "b": _entry(groups[b], score)}
    d, se = reproduce.difference(pair, "a", "b", "best")
    p = reproduce.welch_p(pair, "a", "b", "best")
    lines.append(f"  {name:10s} {d:+.1f}" + (f" ± {se:.1f}" if se else "") +
                 f" ({len(pair['a']['seeds'])}+{len(pair['b']['seeds'])}"
                 + (f", {reproduce.format_p(p)})" if p is not None else ")"))
  return lines


def report(results, task):
  groups = variants(results, task)
  lines = []
  for row in ("psl", "e2e_at_psl", "e2e"):
    ranked = ranking(groups, row)
    if not ranked:
      continue
    lines += [f"{task} {row}: variants by validation accuracy at the best block "
              "(mean ± sd over seeds; test beside it)"]
    test_order = sorted(ranked, key=lambda item: -item[2]["best"][0])
    for i, (tag, val, test) in enumerate(ranked, 1):
      lines.append(f"  {i}. {row}{tag or ' (default)'}: validation "
                   f"{reproduce.fmt(*val['best'])}, test {reproduce.fmt(*test['best'])} "
                   f"(test rank {test_order.index((tag, val, test)) + 1}, seeds "
                   f"{','.join(map(str, val['seeds']))})")
  best_psl, best_e2e = ranking(groups, "psl"), ranking(groups, "e2e_at_psl")
  if best_psl and best_e2e:
    a, b = ("psl", best_psl[0][0]), ("e2e_at_psl", best_e2e[0][0])
    lines += [f"{task}: the validation-chosen psl ({a[0]}{a[1]}) − the validation-chosen "
              f"e2e_at_psl ({b[0]}{b[1]}), best block:", *compare(groups, a, b)]
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("--results", default=os.path.join(REPO, "docs", "results", "cifar10"))
  parser.add_argument("--task", default="rotation")
  args = parser.parse_args(argv)
  print("\n".join(report(args.results, args.task)))


if __name__ == "__main__":
  main()
