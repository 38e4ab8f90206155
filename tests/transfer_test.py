"""Tests of the transfer evaluation's scripts: scripts/make_digits_folder.py (scikit-learn's
bundled digits as an image folder) and scripts/transfer.py (the driver and its table)."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import make_digits_folder  # pylint: disable=g-import-not-at-top,wrong-import-position
import reproduce  # pylint: disable=g-import-not-at-top,wrong-import-position
import transfer  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_digits_folder_is_a_stratified_32px_rgb_split(tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "digits")
  make_digits_folder.main([out])
  assert "train: 1198 images" in capsys.readouterr().out
  with open(os.path.join(out, "manifest.json")) as f:
    manifest = json.load(f)
  counts = {s: sum(c.values()) for s, c in manifest["counts"].items()}
  assert counts == {"train": 1198, "test": 599}
  indices = {}
  for split in ("train", "test"):
    assert sorted(os.listdir(os.path.join(out, split))) == [str(c) for c in range(10)]
    for c in range(10):
      names = os.listdir(os.path.join(out, split, str(c)))
      assert len(names) == manifest["counts"][split][str(c)]
      indices.setdefault(split, set()).update(int(n[:-4]) for n in names)
    # Stratified: every class keeps about a third of its images in test.
    share = [manifest["counts"]["test"][str(c)] / (manifest["counts"]["test"][str(c)] +
                                                   manifest["counts"]["train"][str(c)])
             for c in range(10)]
    assert max(abs(s - 1 / 3) for s in share) < 0.01
  assert not indices["train"] & indices["test"] and len(indices["train"] | indices["test"]) == 1797
  # A file is its load_digits image: 0..16 scaled to 0..255, grey in R = G = B, 32x32.
  digits = datasets.load_digits()
  index = min(indices["test"])
  label = int(digits.target[index])
  image = np.asarray(Image.open(os.path.join(out, "test", str(label), f"{index:04d}.png")))
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
  nearest = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.BOX))[..., 0]
  assert np.abs(nearest.astype(float) - digits.images[index] * 255 / 16).mean() < 20
  # The same folder again: nothing written; another non-empty folder: refused.
  make_digits_folder.main([out])
  assert "already there, nothing written" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="not empty"):
    make_digits_folder.main([out, "--seed=1"])


def test_pixel_baseline_is_a_strong_linear_reference():
  top1, c = make_digits_folder.pixel_baseline()
  assert 90.0 < top1 <= 100.0 and c in (0.01, 0.1, 1.0, 10.0)


def test_run_names_give_row_variant_and_seed():
  assert transfer.parse_run_name("e2e_at_psl_semisup_s1") == ("e2e_at_psl", "_semisup", 1)
  assert transfer.parse_run_name("psl_semisup_s0") == ("psl", "_semisup", 0)
  assert transfer.parse_run_name("psl_f_s2") == ("psl_f", "", 2)
  assert transfer.parse_run_name("e2e_s10") == ("e2e", "", 10)
  for bad in ("psl", "rot_psl_s0", "psl_sx"):
    with pytest.raises(ValueError):
      transfer.parse_run_name(bad)


def test_transfer_command_uses_the_campaign_probe_flags_and_leaves_runs_alone():
  cmd = transfer.transfer_command("/runs/psl_s1", "/tmp/digits", 1, "/tmp/out", "cifar10")
  args = reproduce.parse_args(["--preset=cifar10", "--phase=table"])
  campaign = reproduce.eval_command(args, "psl", 1)
  probe_part = [a for a in campaign if a.startswith("--") and not a.startswith(
      ("--workdir=", "--output=", "--protocol="))]
  assert probe_part and all(a in cmd for a in probe_part)
  assert "--probe_weight_decays=5e-4,5e-3,5e-2,5e-1" in cmd and "--seed=1" in cmd
  assert "--protocol=transfer" in cmd and "--dataset=folder:/tmp/digits" in cmd
  assert "--write_to_runs=false" in cmd and "--output=/tmp/out" in cmd


def _record(run, row, seed, top1, tag="_semisup"):
  settings = vars(transfer.probe_args("cifar10"))
  return {"run": run, "row": row, "tag": "" if row == "random" else tag, "seed": seed,
          "settings": settings, "data": {"source": "digits", "counts": {"train": {"0": 8},
                                                                      "test": {"0": 4}}},
          "probes": {f"b{i}": {"top1": top1 + i, "weight_decay": 0.05} for i in range(1, 6)}}


def test_table_gives_means_differences_and_welch_p(tmp_path, capsys):
  results = tmp_path / "results"
  results.mkdir()
  values = {"psl": (90.0, 91.0, 92.0), "e2e_at_psl": (85.0, 85.5, 86.5),
            "random": (60.0, 61.0, 62.0, 50.0)}
  for row, tops in values.items():
    for seed, top in enumerate(tops):
      name = f"{row}{'' if row == 'random' else '_semisup'}_s{seed}"
      with open(results / f"{name}.json", "w") as f:
        json.dump(_record(name, row, seed, top), f)
  transfer.main(["--phase=table", f"--results={results}"])
  text = (results / "results.md").read_text()
  assert text.strip() in capsys.readouterr().out
  lines = text.splitlines()
  # Rows in the campaign's order; the untrained floor only for the trained rows' seeds (0-2).
  rows = [l.split(" | ")[0][2:] for l in lines if l.startswith("| ") and " | 0," in l]
  assert rows == ["psl", "e2e_at_psl", "random"]
  assert "| psl | 0,1,2 | 92.0 ± 1.0 |" in text and "| random | 0,1,2 | 62.0 ± 1.0 |" in text
  diff = next(l for l in lines if l.startswith("| psl − e2e_at_psl |"))
  assert "+5.3" in diff and "p = " in diff
  assert next(l for l in lines if l.startswith("| psl − random |"))
  assert "| psl_semisup_s0 | 91.0 (0.05) |" in text and "random_s3" not in text
  assert (results / "results.png").stat().st_size > 1000


def test_untrained_floor_is_the_initialisation_the_run_starts_from(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  flags = {"task": "rotation", "mode": "psl", "backbone": "cifar_resnet", "depth": "10",
           "width": "8", "image_size": "32", "dataset": "demo", "seed": "0"}
  path = str(tmp_path / "random_s3")
  transfer.write_untrained_run(flags, 3, path)
  keras.utils.set_random_seed(3)
  expected = models.build_backbone("cifar_resnet", depth=10, width=8).get_weights()
  got = wd.load_run(path).build_backbone().get_weights()
  assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
  assert wd.read_flags(path)["seed"] == "3"


def _fake_run(path, seed):
  """A three-stage rotation psl run (random weights, no training): a stand-in for a trained
  campaign run."""
  import keras  # pylint: disable=g-import-not-at-top
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  wd.write_flags(path, {"task": "rotation", "mode": "psl", "dataset": "demo",
                        "image_size": "32", "backbone": "cifar_resnet", "depth": "10",
                        "width": "8", "seed": str(seed), "workdir": path})
  for stage in (1, 2, 3):
    keras.utils.set_random_seed(100 + stage)
    wd.save_backbone_weights(models.build_backbone("cifar_resnet", depth=10, width=8),
                             wd.stage_weights_path(path, stage))


@pytest.mark.slow  # integration tier: psl_tf.evaluate subprocesses
def test_transfer_end_to_end_stores_results_skips_them_and_writes_nothing_into_runs(
    tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data = tmp_path / "data"
  for split, count in (("train", 8), ("test", 4)):
    for c in range(2):
      (data / split / str(c)).mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 100, (32, 32, 3)) + 120 * c
        Image.fromarray(pixels.astype(np.uint8)).save(data / split / str(c) / f"{i}.png")
  run = str(tmp_path / "campaign" / "psl_s0")
  _fake_run(run, 0)
  unfinished = str(tmp_path / "campaign" / "e2e_at_psl_s0")
  os.makedirs(os.path.join(unfinished, "stage_1"))
  before = sorted(os.listdir(run))
  results = tmp_path / "results"
  argv = [f"--data={data}", f"--results={results}", f"--scratch={tmp_path / 'scratch'}",
          "--preset=tiny", run, unfinished]
  transfer.main(argv)
  assert sorted(os.listdir(run)) == before and not os.path.exists(os.path.join(run, "eval"))
  stored = sorted(os.listdir(results))
  assert stored == ["psl_s0.json", "random_s0.json", "results.md", "results.png"]
  with open(results / "psl_s0.json") as f:
    record = json.load(f)
  assert sorted(record["probes"]) == list(reproduce.BLOCKS) and record["stage"] == 3
  assert record["evaluate_settings"]["protocol"] == "transfer"
  # Again: everything is stored, so no evaluate process runs.
  calls = []
  monkeypatch.setattr(reproduce, "_run", lambda *a: calls.append(a))
  transfer.main(argv)
  assert not calls
