"""scripts/probe_stages.py: probes after every stage of a stored run, and their table."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


probe_stages = _load("probe_stages")


def _store(results, run, final, earlier):
  """A stored run: the last stage's probes in record.json/probes.json, earlier stages'
  in probes_stage<k>.json, as reproduce.py and probe_stages.py write them."""
  folder = os.path.join(results, run)
  os.makedirs(folder)
  blocks = lambda values: {f"b{i + 1}": {"top1": v} for i, v in enumerate(values)}
  with open(os.path.join(folder, "record.json"), "w") as f:
    json.dump({"probes": blocks(final)}, f)
  with open(os.path.join(folder, "probes.json"), "w") as f:
    json.dump({"stage": 3, "results": blocks(final)}, f)
  for stage, values in earlier.items():
    with open(os.path.join(folder, f"probes_stage{stage}.json"), "w") as f:
      json.dump({"stage": stage, "results": blocks(values)}, f)


def test_table_has_every_stage_of_every_run_and_the_mean_per_stage(tmp_path):
  results = str(tmp_path)
  _store(results, "psl_s0", [50, 52, 58, 57, 55], {1: [50, 51, 57, 45, 40]})
  _store(results, "psl_s1", [52, 54, 60, 59, 57], {1: [52, 53, 61, 47, 42]})
  text = probe_stages.table(results, ["psl_s0", "psl_s1"], [1, 2, 3])
  assert "| psl_s0 | stage 1 | 50.0 | 51.0 | 57.0 | 45.0 | 40.0 |" in text
  assert "| psl_s1 | stage 3 | 52.0 | 54.0 | 60.0 | 59.0 | 57.0 |" in text
  assert "stage 2" not in text  # never probed: left out, not shown empty
  assert "| mean ± sd (2 runs) | stage 1 | 51.0 ± 1.4 | 52.0 ± 1.4 | 59.0 ± 2.8 |" in text


@pytest.mark.slow  # integration tier: pre-trains a tiny psl run and probes it three times
def test_blocks_frozen_after_a_stage_probe_the_same_after_every_later_stage(tmp_path):
  reproduce = _load("reproduce")
  data = tmp_path / "data"
  for split, count in (("train", 8), ("test", 4)):
    for c in range(2):
      os.makedirs(data / split / f"class{c}")
      rng = np.random.default_rng(c)
      for i in range(count):
        pixels = rng.integers(0, 100, (32, 32, 3)) + 120 * c
        Image.fromarray(pixels.astype(np.uint8)).save(data / split / f"class{c}" / f"{i}.png")
  root, results = str(tmp_path / "runs"), str(tmp_path / "results")
  reproduce.main(["--task=rotation", f"--data={data}", f"--root={root}", f"--results={results}",
                  "--preset=tiny", "--seeds=0", "--rows=psl", "--no-random_baseline"])
  task_results, task_root = os.path.join(results, "rotation"), os.path.join(root, "rotation")
  probe_stages.main([f"--results={task_results}", f"--root={task_root}", "--runs=psl_s0",
                     "--stages=1,2"])
  after = {k: probe_stages.top1(task_results, "psl_s0", k) for k in (1, 2, 3)}
  assert os.path.exists(os.path.join(task_results, "psl_s0", "probes_stage2.json"))
  # PSL freezes B1 after stage 1 and B2 after stage 2 (BN in inference mode): the same
  # weights give the same features, and the seeded probe the same accuracy.
  assert after[1]["b1"] == after[2]["b1"] == after[3]["b1"]
  assert after[2]["b2"] == after[3]["b2"]
  # The table is rebuilt from the stored files alone once the work directory is gone.
  shutil.rmtree(root)
  text = probe_stages.table(task_results, ["psl_s0"], [1, 2, 3])
  assert text.count("| psl_s0 | stage") == 3
