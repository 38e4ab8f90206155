"""Tests of scripts/reproduce.py: the equal-epoch commands, the seed aggregation, and (slow) a
whole run of all five modes on a tiny synthetic image folder written here."""

import importlib.util
import json
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                     "reproduce.py")
_spec = importlib.util.spec_from_file_location("reproduce", _PATH)
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _image_folder(root, classes=2, train=6, test=4, size=32):
  """train/<class>/*.png and test/<class>/*.png; class 0 dark, class 1 bright, with noise."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in (("train", train), ("test", test)):
    for c in range(classes):
      folder = os.path.join(root, split, f"class{c}")
      os.makedirs(folder)
      for i in range(count):
        pixels = rng.integers(0, 100, (size, size, 3)) + 120 * c
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))
  return str(root)


def test_e2e_gets_the_three_stages_epochs_and_budget_overrides(tmp_path):
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--budget=small", "--stage_epochs=3",
                               "--width=8", "--root", str(tmp_path / "runs")])
  assert args.width == 8 and args.depth == reproduce.BUDGETS["small"]["depth"]
  e2e = reproduce.train_command(args, "e2e", 0)
  psl = reproduce.train_command(args, "psl", 1)
  assert "--epochs=9" in e2e and "--epochs=3" in psl
  assert "--mode=e2e" in e2e and "--seed=1" in psl
  assert any(a.startswith("--workdir=") and a.endswith("psl_s1") for a in psl)


def test_extra_flags_get_their_own_run_directories(tmp_path):
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--extra=--frozen_bn=batch_stats"])
  assert args.tag == "_frozenbnbatchstats"
  assert reproduce.run_dir(args, "psl", 0).endswith("psl_frozenbnbatchstats_s0")
  assert "--frozen_bn=batch_stats" in reproduce.train_command(args, "psl", 0)


def test_bad_data_folder_and_mode_are_one_line_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--data", str(tmp_path)])
  assert "no train/ sub-folder" in capsys.readouterr().err
  data = _image_folder(tmp_path / "data")
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--data", data, "--modes=psl,bogus"])
  assert "unknown mode(s) bogus" in capsys.readouterr().err


def test_random_baseline_is_the_seeds_initialisation(tmp_path):
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import runs  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--budget=tiny", "--root", str(tmp_path / "r")])
  for seed in (0, 1):
    reproduce.write_random_run(args, seed)
  keras.utils.set_random_seed(1)
  fresh = models.build_backbone("cifar_resnet", depth=args.depth, width=args.width)
  loaded = {s: runs.load_run(reproduce.run_dir(args, reproduce.RANDOM, s)).build_backbone()
            for s in (0, 1)}
  same = [np.array_equal(a.numpy(), b.numpy())
          for a, b in zip(fresh.weights, loaded[1].weights)]
  assert all(same)
  kernels = [(a.numpy(), b.numpy()) for a, b in zip(loaded[0].weights, loaded[1].weights)
             if "kernel" in a.path]
  assert kernels and not any(np.array_equal(a, b) for a, b in kernels)


def test_aggregate_gives_mean_and_sample_sd_over_seeds():
  records = [
      {"mode": "e2e", "seed": 0, "probes": {"b1": {"top1": 10.0}, "b5": {"top1": 30.0}},
       "train_wall_s": 100.0, "pretext_accuracy": 0.5},
      {"mode": "psl", "seed": 0, "probes": {"b1": {"top1": 20.0}, "b5": {"top1": 40.0}},
       "train_wall_s": 60.0, "pretext_accuracy": 0.6},
      {"mode": "psl", "seed": 1, "probes": {"b1": {"top1": 22.0}, "b5": {"top1": 44.0}},
       "train_wall_s": 70.0, "pretext_accuracy": 0.7},
  ]
  table = reproduce.aggregate(records)
  assert list(table) == ["psl", "e2e"]  # the paper's order, not the records'
  assert table["psl"]["b1"] == pytest.approx((21.0, np.std([20, 22], ddof=1)))
  assert table["psl"]["b5"][0] == pytest.approx(42.0)
  assert table["e2e"]["b5"] == (30.0, None)  # one seed: no spread
  assert table["psl"]["b2"] == (None, None)
  assert reproduce.fmt(*table["psl"]["b1"]) == "21.0 ± 1.4"
  assert reproduce.fmt(*table["e2e"]["b5"]) == "30.0"


@pytest.mark.slow
def test_all_five_modes_end_to_end_then_rerun_skips(tmp_path, monkeypatch):
  data = _image_folder(tmp_path / "data")
  root = str(tmp_path / "runs")
  argv = ["--task=rotation", "--data", data, "--root", root, "--budget=tiny", "--seeds=0"]
  reproduce.main(argv)
  out = os.path.join(root, "rotation")
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  assert (sorted(r["mode"] for r in results["records"]) ==
          sorted(reproduce.MODES + (reproduce.RANDOM,)))
  for record in results["records"]:
    assert set(record["probes"]) == set(reproduce.BLOCKS)
    assert all(0.0 <= v["top1"] <= 100.0 for v in record["probes"].values())
    # The random row is the untrained initialisation: no training time.
    assert (record["train_wall_s"] > 0) == (record["mode"] != reproduce.RANDOM)
  text = open(os.path.join(out, "results.md")).read()
  assert "| psl |" in text and "| e2e |" in text and "PSL − e2e" in text
  assert os.path.getsize(os.path.join(out, "results.png")) > 0
  # A second call finds every run finished and probed: no process is started.
  def no_run(cmd, log_path):
    raise AssertionError(f"re-ran {cmd}")
  monkeypatch.setattr(reproduce, "_run", no_run)
  reproduce.main(argv)
