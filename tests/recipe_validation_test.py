"""scripts/recipe_validation.py: variants ranked on the probes' validation split, not test."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "recipe_validation", os.path.join(ROOT, "scripts", "recipe_validation.py"))
recipe_validation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe_validation)


def _record(row, tag, seed, val, test):
  """A stored record whose B1 has validation accuracies `val` per weight decay, B2 test only."""
  return {"row": row, "tag": tag, "seed": seed, "probes": {
      "b1": {"top1": test, "val_by_weight_decay": {"0.0005": val[0], "0.05": val[1]}},
      "b2": {"top1": test - 10, "val_by_weight_decay": {"0.0005": 1.0, "0.05": 2.0}}}}


def _store(results, record):
  path = results / "rotation" / f"{record['row']}{record['tag']}_s{record['seed']}"
  path.mkdir(parents=True)
  (path / "record.json").write_text(json.dumps(record))


def test_the_ranking_follows_validation_even_where_test_disagrees(tmp_path):
  # Variant _a is ahead on validation (max over weight decays: 60, 62) but behind on test.
  for seed, (va, ta, vb, tb) in enumerate([(60.0, 50.0, 55.0, 58.0), (62.0, 52.0, 57.0, 60.0)]):
    _store(tmp_path, _record("psl", "_a", seed, (va - 5, va), ta))
    _store(tmp_path, _record("psl", "_b", seed, (vb, vb - 5), tb))
    _store(tmp_path, _record("e2e_at_psl", "", seed, (50.0, 51.0), 55.0 + seed))
  ranked = recipe_validation.ranking(recipe_validation.variants(str(tmp_path), "rotation"), "psl")
  assert [tag for tag, _, _ in ranked] == ["_a", "_b"]
  assert ranked[0][1]["best"][0] == 61.0 and ranked[0][2]["best"][0] == 51.0
  text = "\n".join(recipe_validation.report(str(tmp_path), "rotation"))
  assert "1. psl_a: validation 61.0 ± 1.4, test 51.0 ± 1.4 (test rank 2, seeds 0,1)" in text
  # The validation-chosen psl (_a) against e2e_at_psl (validation 51 ± 0, test 55.5 ± 0.7):
  # SE sqrt(2/2 + 0) = 1.0 on validation, sqrt(2/2 + 0.5/2) = 1.1 on test.
  assert "validation +10.0 ± 1.0 (2+2" in text
  assert "test       -4.5 ± 1.1 (2+2" in text
