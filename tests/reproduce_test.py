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


def test_e2e_gets_the_three_stages_epochs_and_preset_overrides(tmp_path):
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--preset=small", "--stage_epochs=3",
                               "--width=8", "--root", str(tmp_path / "runs")])
  assert args.width == 8 and args.depth == reproduce.PRESETS["small"]["depth"]
  e2e = reproduce.train_command(args, "e2e", 0)
  psl = reproduce.train_command(args, "psl", 1)
  assert "--epochs=9" in e2e and "--epochs=3" in psl
  assert "--mode=e2e" in e2e and "--seed=1" in psl
  assert any(a.startswith("--workdir=") and a.endswith("psl_s1") for a in psl)
  # The paper's protocol: every stage as long as e2e.
  paper = reproduce.train_command(args, "psl_paper", 0)
  assert "--mode=psl" in paper and "--epochs=9" in paper


def test_matched_e2e_costs_what_the_paper_protocol_psl_costs(tmp_path, monkeypatch):
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--preset=cifar10", "--root", str(tmp_path),
                               "--results", str(tmp_path / "results")])
  # Block FLOPs of cifar_resnet depth 10 width 16 at 32 px are dominated by B2..B4.
  monkeypatch.setattr(reproduce, "block_flops", lambda *a: [1, 4, 3, 3, 3])
  # psl stages: S1 = 3*(1+4+3); S2 = 1 + 3*(4+3+3); S3 = 1+4 + 3*(3+3+3); e2e = 3*14.
  assert reproduce.stage_costs("psl", [1, 4, 3, 3, 3]) == [24, 31, 32]
  assert reproduce.stage_costs("e2e", [1, 4, 3, 3, 3]) == [42]
  e = args.stage_epochs
  assert reproduce.epochs_of(args, "e2e_matched") == round(87 * 3 * e / 42)
  # Both rows then cost the same within one epoch of e2e.
  paper = reproduce.training_tflops(args, "psl_paper", reproduce.epochs_of(args, "psl_paper"))
  matched = reproduce.training_tflops(args, "e2e_matched",
                                      reproduce.epochs_of(args, "e2e_matched"))
  one_epoch = reproduce.training_tflops(args, "e2e", 1)
  assert abs(paper - matched) <= one_epoch / 2
  # e2e at the cost of psl at equal images: a third of the paper protocol's epochs.
  assert reproduce.epochs_of(args, "e2e_at_psl") == round(87 * e / 42)
  psl = reproduce.training_tflops(args, "psl", reproduce.epochs_of(args, "psl"))
  at_psl = reproduce.training_tflops(args, "e2e_at_psl", reproduce.epochs_of(args, "e2e_at_psl"))
  assert abs(psl - at_psl) <= one_epoch / 2 and at_psl < reproduce.training_tflops(
      args, "e2e", reproduce.epochs_of(args, "e2e"))
  with open(tmp_path / "results" / "flops.json") as f:
    assert list(json.load(f).values()) == [[1, 4, 3, 3, 3]]
  # Stages weighted by an extra --epochs flag: the same images as psl, costed per stage.
  weighted = reproduce.parse_args(["--data", data, "--preset=cifar10", "--root", str(tmp_path),
                                   "--results", str(tmp_path / "results"),
                                   "--extra=--epochs=3,5,7"])
  assert reproduce.stage_epochs(weighted, "psl") == [3, 5, 7]
  assert reproduce.stage_epochs(args, "psl") == [e] * 3
  images = args.steps_per_epoch * args.batch_size
  assert reproduce.training_tflops(weighted, "psl", [3, 5, 7]) == pytest.approx(
      (24 * 3 + 31 * 5 + 32 * 7) * images / 1e12)
  assert reproduce.train_command(weighted, "psl", 0)[-1] == "--epochs=3,5,7"  # the last wins
  with pytest.raises(ValueError, match="gives 3 stages to a row of 1"):
    reproduce.stage_epochs(weighted, "e2e")


def test_extra_flags_get_their_own_run_directories(tmp_path):
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--extra=--frozen_bn=batch_stats"])
  assert args.tag == "_frozenbnbatchstats"
  assert reproduce.run_name(args, "psl", 0) == "psl_frozenbnbatchstats_s0"
  assert reproduce.run_dir(args, "psl", 0).endswith("psl_frozenbnbatchstats_s0")
  assert "--frozen_bn=batch_stats" in reproduce.train_command(args, "psl", 0)
  # The untrained network is the same for every variant: one random row serves them all.
  assert reproduce.run_name(args, "random", 0) == "random_s0"


def test_bad_data_folder_and_mode_are_one_line_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--data", str(tmp_path)])
  assert "no train/ sub-folder" in capsys.readouterr().err
  data = _image_folder(tmp_path / "data")
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--data", data, "--modes=psl,bogus"])
  assert "unknown row(s) bogus" in capsys.readouterr().err


def test_random_baseline_is_the_seeds_initialisation(tmp_path):
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  data = _image_folder(tmp_path / "data")
  args = reproduce.parse_args(["--data", data, "--preset=tiny", "--root", str(tmp_path / "r")])
  for seed in (0, 1):
    reproduce.write_random_run(args, seed)
  keras.utils.set_random_seed(1)
  fresh = models.build_backbone("cifar_resnet", depth=args.depth, width=args.width)
  loaded = {s: wd.load_run(reproduce.run_dir(args, reproduce.RANDOM, s)).build_backbone()
            for s in (0, 1)}
  same = [np.array_equal(a.numpy(), b.numpy())
          for a, b in zip(fresh.weights, loaded[1].weights)]
  assert all(same)
  kernels = [(a.numpy(), b.numpy()) for a, b in zip(loaded[0].weights, loaded[1].weights)
             if "kernel" in a.path]
  assert kernels and not any(np.array_equal(a, b) for a, b in kernels)


def _record(row, seed, b1, b5, heldout=0.5):
  mode, protocol = reproduce.ROWS[row]
  settings = {k: (reproduce.PRESETS["small"].get(k)
                  if k in reproduce.PROBE_SETTINGS + reproduce.ARCH else 1)
              for k in reproduce.SETTINGS}
  return {"row": row, "mode": mode or "random", "protocol": protocol, "seed": seed, "tag": "",
          "preset": "small", "settings": settings,
          "probes": {"b1": {"top1": b1}, "b5": {"top1": b5}}, "train_wall_s": 60.0 + seed,
          "pretext_accuracy": 0.6, "heldout_accuracy": heldout,
          "stage_heldout_accuracy": [0.9, 0.7, heldout], "training_tflops": 2.0,
          "epochs_per_stage": 1}


def test_knn_and_finetune_results_get_their_own_columns_and_tables():
  records = []
  for seed, (knn, one, ten) in enumerate([(30.0, 20.0, 50.0), (34.0, 22.0, 54.0)]):
    record = _record("psl", seed, 40.0, 41.0)
    record["knn"] = {"b1": {"top1": knn}, "b5": {"top1": knn + 2}}
    record["finetune"] = {"1%": {"top1": one}, "10%": {"top1": ten}}
    records.append(record)
  records.append(_record("e2e", 0, 45.0, 46.0))  # no kNN, no fine-tuning: no such columns
  table = reproduce.aggregate(records)
  assert table["psl"]["knn"]["b1"] == pytest.approx((32.0, np.std([30, 34], ddof=1)))
  assert table["psl"]["knn"]["best"][0] == pytest.approx(34.0)  # per seed: B5, then mean
  assert table["psl"]["finetune_1%"][0] == pytest.approx(21.0)
  assert table["psl"]["finetune_10%"][0] == pytest.approx(52.0)
  assert "knn" not in table["e2e"] and "finetune_1%" not in table["e2e"]
  args = reproduce.parse_args(["--phase=table", "--task=simclr", "--results=/nowhere"])
  assert args.knn and not args.finetune  # kNN by default on the contrastive tasks only
  text = reproduce.markdown(args, records, table)
  assert "| psl | 0,1 | 32.0 ± 2.8 | – | – | – | 34.0 ± 2.8 | 34.0 ± 2.8 |" in text
  assert "| psl | 0,1 | 21.0 ± 1.4 | 52.0 ± 2.8 |" in text
  assert "| e2e | 0 |" not in text.split("Weighted kNN")[1].split("Per seed")[0]


def test_another_width_has_its_own_untrained_floor_and_table(tmp_path):
  args = reproduce.parse_args(["--phase=table", "--preset=cifar10", "--width=32",
                               "--tag=_w32", f"--results={tmp_path}"])
  assert reproduce.run_name(args, "random", 0) == "random_d10_w32_32px_s0"
  assert reproduce.run_name(args, "psl", 0) == "psl_w32_s0"
  same = reproduce.parse_args(["--phase=table", "--preset=cifar10", f"--results={tmp_path}"])
  assert reproduce.run_name(same, "random", 0) == "random_s0"  # stored names unchanged
  for name, width in (("random_s0", 16), ("random_d10_w32_32px_s0", 32)):
    record = _record("random", 0, 10.0 + width, 20.0)
    record["settings"].update(depth=10, width=width, image_size=32)
    (tmp_path / "rotation" / name).mkdir(parents=True)
    (tmp_path / "rotation" / name / "record.json").write_text(json.dumps(record))
  psl = _record("psl", 0, 50.0, 50.0)
  psl["tag"] = "_w32"
  psl["settings"].update(depth=10, width=32, image_size=32)
  (tmp_path / "rotation" / "psl_w32_s0").mkdir()
  (tmp_path / "rotation" / "psl_w32_s0" / "record.json").write_text(json.dumps(psl))
  records = reproduce.load_records(str(tmp_path), "rotation", "_w32",
                                   arch={"depth": 10, "width": 32, "image_size": 32})
  assert sorted((r["row"], r["probes"]["b1"]["top1"]) for r in records) == [
      ("psl", 50.0), ("random", 42.0)]


def test_aggregate_gives_mean_and_sample_sd_over_seeds():
  records = [_record("e2e", 0, 10.0, 30.0), _record("psl", 0, 20.0, 40.0),
             _record("psl", 1, 22.0, 44.0)]
  table = reproduce.aggregate(records)
  assert list(table) == ["psl", "e2e"]  # the table's order, not the records'
  assert table["psl"]["b1"] == pytest.approx((21.0, np.std([20, 22], ddof=1)))
  assert table["psl"]["b5"][0] == pytest.approx(42.0)
  assert table["psl"]["best"][0] == pytest.approx(42.0)
  assert table["e2e"]["b5"] == (30.0, None)  # one seed: no spread
  assert table["psl"]["b2"] == (None, None)
  assert table["psl"]["heldout_accuracy"][0] == pytest.approx(50.0)
  assert reproduce.fmt(*table["psl"]["b1"]) == "21.0 ± 1.4"
  assert reproduce.fmt(*table["e2e"]["b5"]) == "30.0"


def test_tables_are_built_from_the_stored_records_alone(tmp_path):
  results = tmp_path / "results"
  stored = [_record("psl", s, 40.0 + s, 50.0 + s) for s in (0, 1, 2)]
  stored += [_record("e2e", s, 30.0 + s, 40.0 - s) for s in (0, 1, 2)]
  stored += [_record("random", s, 35.0, 30.0, heldout=None) for s in (0, 1)]
  stored += [_record("psl_paper", 0, 31.5, 40.0)]  # one seed so far
  stored += [_record("e2e_at_psl", 0, 38.0, 45.0)]  # one seed, as the second row of a pair
  for record in stored:
    folder = results / "rotation" / f"{record['row']}_s{record['seed']}"
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))
  # A record of another variant (tag) and an unprobed one are left out.
  other = dict(_record("psl", 1, 99.0, 99.0), tag="_x")
  (results / "rotation" / "psl_x_s1").mkdir()
  (results / "rotation" / "psl_x_s1" / "record.json").write_text(json.dumps(other))
  (results / "rotation" / "psl_s9").mkdir()
  (results / "rotation" / "psl_s9" / "record.json").write_text(json.dumps({"row": "psl"}))
  # So is a record probed another way: a table never mixes probe protocols.
  reprobed = _record("psl", 7, 99.0, 99.0)
  reprobed["settings"]["probe_weight_decays"] = "5e-4,5e-2"
  (results / "rotation" / "psl_s7").mkdir()
  (results / "rotation" / "psl_s7" / "record.json").write_text(json.dumps(reprobed))
  reproduce.main(["--phase=table", "--task=rotation", "--results", str(results),
                  "--preset=small"])
  text = (results / "rotation" / "results.md").read_text()
  assert "| psl | 0,1,2 | 1 | 41.0 ± 1.0 |" in text
  assert "| random | 0,1 |" in text
  # psl − e2e at B1: +10.0, standard error sqrt(1/3 + 1/3) = 0.8: outside 2 SE; Welch t =
  # 12.2 on 4 degrees of freedom: p = 0.00026 (the t density integrated numerically).
  assert "| psl − e2e | equal images | +10.0 ± 0.8 (outside 2 SE, p < 0.001) |" in text
  assert "| psl s2 | 42.0 | – | – | – | 52.0 | 90.0/70.0/50.0 | 62 |" in text
  # A single seed is placed against the other row's spread: B1 31.5 − 31.0 = +0.5, e2e sd 1.0.
  assert ("| psl_paper − e2e | paper's protocol vs e2e at equal epochs per stage | "
          "+0.5 (within e2e mean ± 2 sd) |") in text
  # ... and so is a single seed of the second row: B1 41.0 − 38.0 = +3.0 against psl's sd 1.0.
  assert ("| psl − e2e_at_psl | equal images vs e2e at equal compute | "
          "+3.0 (outside psl mean ± 2 sd) |") in text
  assert "99.0" not in text
  table = json.loads((results / "rotation" / "results.json").read_text())["table"]
  assert sorted(table) == ["e2e", "e2e_at_psl", "psl", "psl_paper", "random"]
  assert (results / "rotation" / "results.png").stat().st_size > 0
  # The variant's table has its own rows and the shared untrained floor of the same seeds.
  variant = reproduce.load_records(str(results), "rotation", tag="_x")
  assert sorted((r["row"], r["seed"]) for r in variant) == [("psl", 1), ("random", 1)]
  # ... and says how it differs from the same rows without it. One variant seed is placed
  # against the base's spread: psl_x B1 99.0 vs psl 41.0 ± 1.0.
  reproduce.main(["--phase=table", "--task=rotation", "--results", str(results),
                  "--preset=small", "--tag=_x"])
  text = (results / "rotation" / "results_x.md").read_text()
  assert "| psl_x − psl | 1 vs 0,1,2 | +58.0 (outside base mean ± 2 sd) |" in text
  assert "e2e_x" not in text  # no e2e run of the variant: no line
  # With several variant seeds the difference gets its standard error.
  for seed, b1 in ((6, 41.5), (7, 43.5)):
    record = dict(_record("psl", seed, b1, 50.0), tag="_x")
    (results / "rotation" / f"psl_x_s{seed}").mkdir()
    (results / "rotation" / f"psl_x_s{seed}" / "record.json").write_text(json.dumps(record))
  (results / "rotation" / "psl_x_s1" / "record.json").unlink()
  reproduce.main(["--phase=table", "--task=rotation", "--results", str(results),
                  "--preset=small", "--tag=_x"])
  text = (results / "rotation" / "results_x.md").read_text()
  # 42.5 - 41.0 = +1.5, SE sqrt(2.0/2 + 1.0/3) = 1.15: within 2 SE; Welch t = 1.30 on
  # 1.68 degrees of freedom (Welch–Satterthwaite): p = 0.34.
  assert "| psl_x − psl | 6,7 vs 0,1,2 | +1.5 ± 1.2 (within 2 SE, p = 0.34) |" in text
  assert "| random |" not in text  # no untrained record of seeds 6, 7: no floor
  # An ablation made on top of a variant is compared with that variant (--base_extra).
  for seed, b1 in ((6, 45.5), (7, 47.5)):
    record = dict(_record("psl", seed, b1, 50.0), tag="_x_y")
    (results / "rotation" / f"psl_x_y_s{seed}").mkdir()
    (results / "rotation" / f"psl_x_y_s{seed}" / "record.json").write_text(json.dumps(record))
  reproduce.main(["--phase=table", "--task=rotation", "--results", str(results),
                  "--preset=small", "--extra=--x", "--extra=--y", "--base_extra=--x"])
  text = (results / "rotation" / "results_x_y.md").read_text()
  # 46.5 - 42.5 = +4.0, SE sqrt(2/2 + 2/2) = 1.4: outside 2 SE, yet with two seeds a side
  # Welch's t = 2.83 on 2 degrees of freedom gives p = 1 - t / sqrt(2 + t²) = 0.11.
  assert "| psl_x_y − psl_x | 6,7 vs 6,7 | +4.0 ± 1.4 (outside 2 SE, p = 0.11) |" in text
  assert "against the same rows of the variant --x" in text
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--phase=table", "--extra=--x", "--base_extra=--x"])


@pytest.mark.slow
def test_every_row_end_to_end_then_rerun_skips(tmp_path, monkeypatch):
  data = _image_folder(tmp_path / "data")
  root, results = str(tmp_path / "runs"), str(tmp_path / "results")
  argv = ["--task=rotation", "--data", data, "--root", root, "--results", results,
          "--preset=tiny", "--seeds=0", "--rows=" + ",".join(r for r in reproduce.ROWS
                                                             if r != reproduce.RANDOM)]
  reproduce.main(argv)
  out = os.path.join(results, "rotation")
  records = reproduce.load_records(results, "rotation")
  assert sorted(r["row"] for r in records) == sorted(reproduce.ROWS)
  for record in records:
    assert set(record["probes"]) == set(reproduce.BLOCKS)
    assert all(0.0 <= v["top1"] <= 100.0 for v in record["probes"].values())
    # The random row is the untrained initialisation: no training time, no compute.
    assert (record["train_wall_s"] > 0) == (record["row"] != reproduce.RANDOM)
    assert (record["training_tflops"] > 0) == (record["row"] != reproduce.RANDOM)
    stored = os.path.join(out, f"{record['row']}_s0")
    assert sorted(os.listdir(stored)) == ["probes.json", "record.json", "summary.json"]
    if record["row"] != reproduce.RANDOM:
      assert all(0 <= a <= 1 for a in record["stage_heldout_accuracy"])
  text = open(os.path.join(out, "results.md")).read()
  assert "| psl |" in text and "| e2e_matched |" in text and "psl − e2e" in text
  assert os.path.getsize(os.path.join(out, "results.png")) > 0
  # Run directories gone (a new machine): the stored records alone skip every run.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(root)
  def no_run(cmd, log_path):
    raise AssertionError(f"re-ran {cmd}")
  monkeypatch.setattr(reproduce.runner, "_run", no_run)
  reproduce.main(argv)


def _probe_only(tmp_path, monkeypatch, score):
  """Command line of a tiny campaign over an empty image tree, with psl_tf.evaluate replaced
  by a fake that writes what the real one leaves in <workdir>/eval, its B1 top-1 given by
  `score(decays, calls)`. Returns (argv, calls)."""
  data = tmp_path / "data"
  for split in ("train", "test"):
    (data / split).mkdir(parents=True)
  argv = ["--task=rotation", "--data", str(data), "--root", str(tmp_path / "runs"),
          "--results", str(tmp_path / "results"), "--preset=tiny", "--seeds=0"]
  calls = []

  def fake_probe(cmd, log_path):
    calls.append(cmd)
    flags = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    decays = [float(d) for d in flags.get("probe_weight_decays", "").split(",") if d]
    os.makedirs(os.path.join(flags["workdir"], "eval"), exist_ok=True)
    protocol = flags.get("protocol", "linear")
    if protocol != "linear":  # fine-tuning or kNN: one result per label fraction or block
      with open(os.path.join(flags["workdir"], "eval", f"{protocol}_x_stage1.json"), "w") as f:
        json.dump({"results": {"1%": {"top1": 30.0}, "10%": {"top1": 60.0}}}, f)
      return 1.0
    with open(os.path.join(flags["workdir"], "eval", "linear_x_stage1.json"), "w") as f:
      json.dump({"settings": {"epochs": int(flags["epochs"]),
                              "batch_size": int(flags["batch_size"]),
                              "learning_rate": float(flags["learning_rate"]),
                              "probe_inputs": flags["probe_inputs"],
                              **({"probe_weight_decays": decays} if decays else {})},
                 "results": {"b1": {"top1": score(decays, calls)}}}, f)
    return 1.0

  monkeypatch.setattr(reproduce.runner, "_run", fake_probe)
  return argv, calls


def test_a_run_probed_another_way_is_probed_again_without_pre_training(tmp_path, monkeypatch):
  argv, calls = _probe_only(tmp_path, monkeypatch, lambda decays, calls: 50.0 + len(decays))
  first = reproduce.run_one(reproduce.parse_args(argv), reproduce.RANDOM, 0, log=lambda _: 0)
  assert first["probes"]["b1"]["top1"] == 50.0 and len(calls) == 1
  # The same settings: stored, nothing runs.
  reproduce.run_one(reproduce.parse_args(argv), reproduce.RANDOM, 0, log=lambda _: 0)
  assert len(calls) == 1
  # Other probe settings: probed again (and only probed), the record replaced.
  args = reproduce.parse_args(argv + ["--probe_weight_decays=5e-4,5e-2"])
  second = reproduce.run_one(args, reproduce.RANDOM, 0, log=lambda _: 0)
  assert len(calls) == 2 and calls[1][1:3] == ["-m", "psl_tf.evaluate"]
  assert "--probe_weight_decays=5e-4,5e-2" in calls[1]
  assert second["probes"]["b1"]["top1"] == 52.0
  # The record keeps the commit that pre-trained it and says which one probed it.
  assert second["code_version"] == first["code_version"] and "probe_code_version" in second
  assert reproduce.read_record(args, reproduce.RANDOM, 0)["probes"]["b1"]["top1"] == 52.0
  assert reproduce.read_record(reproduce.parse_args(argv), reproduce.RANDOM, 0) is None


def test_a_stored_run_missing_only_its_fine_tuning_keeps_its_probes(tmp_path, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  argv, calls = _probe_only(tmp_path, monkeypatch, lambda decays, calls: 50.0 + len(calls))
  first = reproduce.run_one(reproduce.parse_args(argv), reproduce.RANDOM, 0, log=lambda _: 0)
  assert first["probes"]["b1"]["top1"] == 51.0 and len(calls) == 1
  probes_file = os.path.join(reproduce.stored_dir(reproduce.parse_args(argv), reproduce.RANDOM,
                                                  0), "probes.json")
  stored_probes = open(probes_file).read()
  # A new machine (the run directory gone), and an experiment that fine-tunes the floor too:
  # only the fine-tuning runs; the stored probes, their commit and their file stay.
  shutil.rmtree(str(tmp_path / "runs"))
  args = reproduce.parse_args(argv + ["--finetune"])
  said = []
  second = reproduce.run_one(args, reproduce.RANDOM, 0, log=said.append)
  assert len(calls) == 2 and "--protocol=finetune" in calls[1]
  assert second["finetune"] == {"1%": {"top1": 30.0}, "10%": {"top1": 60.0}}
  assert second["probes"] == first["probes"] and "previous_probes" not in second
  assert second["probe_code_version"] == first["probe_code_version"]
  assert open(probes_file).read() == stored_probes
  assert any("stored probes kept" in line for line in said)
  assert reproduce.read_record(args, reproduce.RANDOM, 0)["finetune"]["10%"]["top1"] == 60.0
  # Stored with both now: nothing runs.
  reproduce.run_one(args, reproduce.RANDOM, 0, log=lambda _: 0)
  assert len(calls) == 2


def test_reprobe_before_probes_again_what_older_probe_code_made(tmp_path, monkeypatch):
  # Commits of a repository of its own (CI may clone this one shallow).
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = tmp_path / "repo"
  repo.mkdir()
  def git(*cmd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()
  git("init", "-q")
  commits = []
  for i in range(3):
    git("commit", "-q", "--allow-empty", "-m", f"c{i}")
    commits.append(git("rev-parse", "HEAD"))
  monkeypatch.setattr(reproduce.runner, "REPO", str(repo))
  assert reproduce.probed_before({"probe_code_version": commits[0]}, commits[1])
  assert not reproduce.probed_before({"probe_code_version": commits[1]}, commits[1])
  assert not reproduce.probed_before({"probe_code_version": commits[2] + "+"}, commits[1])
  # No probe_code_version: probed by the commit that pre-trained it.
  assert reproduce.probed_before({"code_version": commits[0]}, commits[1])
  with pytest.raises(ValueError, match="not a commit"):
    reproduce.probed_before({"probe_code_version": commits[0]}, "f" * 40)

  argv, calls = _probe_only(tmp_path, monkeypatch, lambda decays, calls: 50.0 + len(calls))
  monkeypatch.setattr(reproduce.runner, "code_version", lambda: commits[0])
  first = reproduce.run_one(reproduce.parse_args(argv), reproduce.RANDOM, 0, log=lambda _: 0)
  assert first["probes"]["b1"]["top1"] == 51.0 and len(calls) == 1
  # Probed by commits[0]: a re-probe before commits[0] finds nothing older, runs nothing.
  reproduce.run_one(reproduce.parse_args(argv + [f"--reprobe_before={commits[0]}"]),
                    reproduce.RANDOM, 0, log=lambda _: 0)
  assert len(calls) == 1
  # Before commits[2]: probed again with the new code, the old numbers kept beside.
  monkeypatch.setattr(reproduce.runner, "code_version", lambda: commits[2])
  args = reproduce.parse_args(argv + [f"--reprobe_before={commits[2]}"])
  second = reproduce.run_one(args, reproduce.RANDOM, 0, log=lambda _: 0)
  assert len(calls) == 2 and second["probes"]["b1"]["top1"] == 52.0
  assert second["probe_code_version"] == commits[2]
  assert second["previous_probes"]["top1"] == {"b1": 51.0}
  assert second["previous_probes"]["probe_code_version"] == commits[0]
  # Now current: the same request runs nothing.
  reproduce.run_one(args, reproduce.RANDOM, 0, log=lambda _: 0)
  assert len(calls) == 2
  # A trained run whose weights are gone is never pre-trained again to be re-probed.
  old = dict(first, row="psl", mode="psl", protocol="equal")
  del old["run_id"]  # a record of code before run ids, its command not a psl row's: unchecked
  os.makedirs(reproduce.stored_dir(args, "psl", 0))
  with open(os.path.join(reproduce.stored_dir(args, "psl", 0), "record.json"), "w") as f:
    json.dump(old, f)
  said = []
  assert reproduce.run_one(args, "psl", 0, log=said.append) == old
  assert len(calls) == 2 and "cannot be probed again" in said[-1]


def test_a_run_resumed_by_another_commit_records_every_training_commit(tmp_path, monkeypatch):
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  for split in ("train", "test"):
    (data / split).mkdir(parents=True)
  args = reproduce.parse_args(["--task=rotation", "--data", str(data), "--root",
                               str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
                               "--preset=tiny", "--seeds=0"])
  commit = ["aaa"]  # killed under aaa, resumed and probed under bbb
  monkeypatch.setattr(reproduce.runner, "code_version", lambda: commit[0])
  trainings = []

  def fake_run(cmd, log_path):
    flags = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    workdir = flags["workdir"]
    if cmd[2] == "psl_tf.train":
      trainings.append(cmd)
      if len(trainings) == 1:
        raise RuntimeError("killed")
      os.makedirs(wd.stage_dir(workdir, 1))
      open(os.path.join(wd.stage_dir(workdir, 1), wd.DONE_FILE), "w").close()
      wd.write_summary(workdir, {"stages": [{"stage": 1, "wall_time_s": 5.0}]})
    else:
      os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
      with open(os.path.join(workdir, "eval", "linear_x_stage1.json"), "w") as f:
        json.dump({"settings": reproduce.probe_settings(vars(args)),
                   "results": {"b1": {"top1": 60.0}}}, f)
    return 1.0

  monkeypatch.setattr(reproduce.runner, "_run", fake_run)
  monkeypatch.setattr(reproduce.runner, "_find_probe_json", lambda a, workdir, row: (
      os.path.join(workdir, "eval", "linear_x_stage1.json")
      if os.path.exists(os.path.join(workdir, "eval", "linear_x_stage1.json")) else None))
  with pytest.raises(RuntimeError, match="killed"):
    reproduce.run_one(args, "e2e", 0, log=lambda _: 0)
  commit[0] = "bbb"
  record = reproduce.run_one(args, "e2e", 0, log=lambda _: 0)
  assert len(trainings) == 2
  assert record["train_code_versions"] == ["aaa", "bbb"]
  assert record["code_version"] == "bbb" and record["probe_code_version"] == "bbb"
