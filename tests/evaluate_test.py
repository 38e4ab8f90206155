"""`python -m psl_tf.evaluate` end to end on a tiny demo run, the report, and transfer data."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from psl_tf import config as config_lib
from psl_tf.evaluation import probes
from psl_tf.evaluation import report
from psl_tf.evaluation import transfer
from psl_tf.data import views
from psl_tf import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout=600):
  return subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout)


def _fake_run(path):
  """A demo work directory with three finished stages, written without training (fast)."""
  import keras  # pylint: disable=g-import-not-at-top
  from psl_tf.models import build_backbone  # pylint: disable=g-import-not-at-top
  wd.write_flags(path, {"task": "rotation", "mode": "psl", "dataset": "demo", "image_size": "32",
                        "backbone": "cifar_resnet", "depth": "10", "width": "8", "epochs": "1",
                        "rotation_crop": "uniform", "strategy": "auto", "workdir": path})
  for stage in (1, 2, 3):
    keras.utils.set_random_seed(stage)
    wd.save_backbone_weights(build_backbone("cifar_resnet", depth=10, width=8),
                             wd.stage_weights_path(path, stage))
  return path


@pytest.fixture
def fake_run(tmp_path):
  return _fake_run(str(tmp_path / "rot_psl"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """A real (tiny) pre-training run on the demo data, made by the train entry point."""
  path = str(tmp_path_factory.mktemp("eval") / "rot_psl")
  result = _run(["psl_tf.train", "--task=rotation", "--epochs=1", "--steps_per_epoch=2",
                 "--image_size=32", "--depth=10", "--width=8", "--batch_size=16",
                 "--export=false", "--verbose=0", f"--workdir={path}"])
  assert result.returncode == 0, result.stderr[-3000:]
  return path


def test_config_round_trips_through_flags_txt(fake_run):
  demo_run = fake_run
  run = wd.load_run(demo_run)
  assert run.stage == 3
  assert (run.config.backbone, run.config.depth, run.config.width) == ("cifar_resnet", 10, 8)
  assert run.config.image_size == 32 and run.config.epochs == (1,)
  assert run.config.task_options.crop == "uniform"
  assert wd.load_run(demo_run, 1).stage == 1
  with pytest.raises(ValueError, match="no finished stage 4"):
    wd.load_run(demo_run, 4)
  values = {"depth": "18", "recompute": "true", "epochs": "3,2,1", "data_dir": "None",
            "learning_rate": "0.5", "strategy": "mirrored"}
  config = config_lib.from_flags(values)
  assert (config.depth, config.recompute, config.epochs) == (18, True, (3, 2, 1))
  assert config.data_dir is None and config.learning_rate == 0.5


def _check_outputs(out, eval_dir, names):
  assert "| Method | B1 | B2 | B3 | B4 | B5 |" in out
  rows = [l for l in out.splitlines() if l.startswith("| rot_")]
  assert len(rows) == len(names) and all(len(r.split("|")) == 8 for r in rows)
  with open(os.path.join(eval_dir, "linear_demo.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(eval_dir, "linear_demo.json")) as f:
    table = json.load(f)
  assert [r["run"] for r in table["rows"]] == names
  for row in table["rows"]:
    assert sorted(row["results"]) == ["b1", "b2", "b3", "b4", "b5"]
    for cell in row["results"].values():
      assert 0.0 <= cell["top1"] <= cell["top5"] <= 100.0
  return table


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_evaluate_cli_on_a_run_prints_table_and_writes_plot(fake_run):
  result = _run(["psl_tf.evaluate", f"--workdir={fake_run}", "--stage=2", "--epochs=1",
                 "--steps_per_epoch=2", "--batch_size=32"])
  assert result.returncode == 0, result.stderr[-3000:]
  _check_outputs(result.stdout, os.path.join(fake_run, "eval"), ["rot_psl s2"])
  assert os.path.exists(os.path.join(fake_run, "eval", "linear_demo_stage2.json"))
  # Progress while it works, as plain lines (stdout is a pipe): each probe epoch.
  assert re.search(r"probe.* epoch 1/1", result.stdout), result.stdout
  assert "\x1b" not in result.stdout and "\r" not in result.stdout


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_evaluate_cli_on_images_prints_probe_epochs(fake_run):
  result = _run(["psl_tf.evaluate", f"--workdir={fake_run}", "--stage=2", "--epochs=1",
                 "--steps_per_epoch=2", "--batch_size=32", "--probe_inputs=images",
                 f"--output={fake_run}/eval_images"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "training linear probes on b1, b2, b3, b4, b5: 1 epochs x 2 steps" in result.stdout
  assert "[probes] epoch 1/1 | loss " in result.stdout and "img/s" in result.stdout
  assert "\x1b" not in result.stdout and "\r" not in result.stdout


@pytest.mark.slow
def test_evaluate_cli_on_a_trained_demo_run_with_compare(demo_run, tmp_path):
  other = str(tmp_path / "rot_copy")
  shutil.copytree(demo_run, other)
  result = _run(["psl_tf.evaluate", f"--workdir={demo_run}", f"--compare={other}",
                 "--epochs=1", "--steps_per_epoch=2", "--batch_size=32"])
  assert result.returncode == 0, result.stderr[-3000:]
  table = _check_outputs(result.stdout, os.path.join(demo_run, "eval"),
                        ["rot_psl s3", "rot_copy (psl) s3"])
  # Same weights, same seed: the two rows agree.
  assert table["rows"][0]["results"] == table["rows"][1]["results"]
  assert os.path.exists(os.path.join(demo_run, "eval", "linear_demo_stage3.json"))
  assert os.path.exists(os.path.join(other, "eval", "linear_demo_stage3.json"))


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_evaluate_cli_errors_are_one_line(tmp_path):
  result = _run(["psl_tf.evaluate", f"--workdir={tmp_path}"])
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("psl_tf.evaluate: error: ") and "flags.txt" in last


def test_evaluate_api_and_program_in_process(fake_run, capsys):
  # The Python API: no flags; the same evaluation the command line runs.
  import psl_tf  # pylint: disable=g-import-not-at-top
  result = psl_tf.evaluate(fake_run, protocol="linear", stage=2, epochs=1, steps_per_epoch=2,
                           batch_size=32, probe_inputs="features", log=None, verbose=0)
  assert [label for label, _ in result.rows] == ["rot_psl s2"]
  assert sorted(result.results) == ["b1", "b2", "b3", "b4", "b5"]
  assert "| Method | B1 | B2 | B3 | B4 | B5 |" in result.table()
  assert os.path.exists(result.paths["plot"])
  with open(os.path.join(fake_run, "eval", "linear_demo_stage2.json")) as f:
    assert json.load(f)["settings"]["epochs"] == 1
  # The program's main on its own flags, in this process: a mistake is one line, exit 2.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import evaluate as cli  # pylint: disable=g-import-not-at-top
  flag_values = cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.evaluate", f"--workdir={os.path.dirname(fake_run)}", "--epochs=1"])
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["psl_tf.evaluate"], flag_values)
  assert exit_info.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("psl_tf.evaluate: error: ")
  assert "flags.txt" in lines[0]


def test_evaluate_recalibrates_batch_norm_before_probing(fake_run, monkeypatch):
  import psl_tf  # pylint: disable=g-import-not-at-top
  from psl_tf.models import blocks  # pylint: disable=g-import-not-at-top
  seen = {}
  original = blocks.recalibrate_batch_norm

  def spy(model, batches):
    seen["batches"] = original(model, batches)
    seen["mean"] = [v.numpy().copy() for v in blocks.moving_statistics(model)[:1]]
    return seen["batches"]

  monkeypatch.setattr(blocks, "recalibrate_batch_norm", spy)
  result = psl_tf.evaluate(fake_run, protocol="linear", stage=2, epochs=1, steps_per_epoch=2,
                           batch_size=32, probe_inputs="features", log=None, verbose=0,
                           bn_recalibration_batches=2)
  assert seen["batches"] == 2
  # A freshly initialised backbone's moving mean is 0; re-estimated on images it is not.
  assert np.abs(seen["mean"][0]).max() > 1e-3
  assert sorted(result.results) == ["b1", "b2", "b3", "b4", "b5"]
  with open(os.path.join(fake_run, "eval", "linear_demo_stage2.json")) as f:
    assert json.load(f)["settings"]["bn_recalibration_batches"] == 2
  with pytest.raises(ValueError, match="fine-tuning trains"):
    psl_tf.evaluate(fake_run, protocol="finetune", stage=2, epochs=1, steps_per_epoch=1,
                    batch_size=8, log=None, verbose=0, bn_recalibration_batches=1)


def test_report_table_layout(tmp_path):
  rows = [("psl", {f"b{i}": {"top1": 10.0 * i, "top5": 20.0 * i} for i in range(1, 6)}),
          ("e2e", {"b1": {"top1": 5.0}, "b5": {"top1": 55.56}})]
  table = report.markdown_table(rows, title="t")
  assert "| psl | 10.0 | 20.0 | 30.0 | 40.0 | 50.0 |" in table
  assert "| e2e | 5.0 | – | – | – | 55.6 |" in table
  paths = report.write_report(str(tmp_path / "out"), "k", rows, {"protocol": "linear"}, "t")
  with open(paths["json"]) as f:
    assert json.load(f)["rows"][1]["results"]["b5"]["top1"] == 55.56
  assert os.path.getsize(paths["plot"]) > 1000
  voc = [("a", {"b1": {"mAP": 40.0}})]
  assert report.main_metric(voc) == "mAP" and "(mAP, %)" in report.markdown_table(voc, title="x")


def test_multi_hot_eagerly_and_in_tf_data():
  labels = tf.constant([3, 0, 3], tf.int64)
  eager = transfer.multi_hot(labels, 5).numpy()
  graph = next(iter(tf.data.Dataset.from_tensors(labels).map(lambda l: transfer.multi_hot(l, 5))))
  np.testing.assert_array_equal(eager, [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(graph.numpy(), eager)
  empty = transfer.multi_hot(tf.zeros([0], tf.int64), 5).numpy()
  np.testing.assert_array_equal(empty, np.zeros(5))


def test_voc2007_transfer_is_multi_label_and_scored_by_map():
  with tfds.testing.mock_data(num_examples=24):
    source, multi_label = transfer.load_labelled("voc/2007", "train")
    assert multi_label and source.num_classes == 20
    image, label = next(iter(source.images()))
    assert image.dtype == tf.uint8 and label.shape == (20,) and label.dtype == tf.float32
    assert set(np.unique(label.numpy())) <= {0.0, 1.0}
    train = views.labelled_dataset(source, 16, 18, 8, training=True)
    test = views.labelled_dataset(transfer.load_labelled("voc/2007", "test")[0], 16, 18, 8,
                                  training=False)
    from psl_tf.models import build_backbone  # pylint: disable=g-import-not-at-top
    results, _ = probes.linear_probe(build_backbone("cifar_resnet", depth=10, width=8), train,
                                     test, 20, 16, epochs=1, steps_per_epoch=2,
                                     block_names=("b1", "b5"), multi_label=True)
  assert sorted(results) == ["b1", "b5"]
  for cell in results.values():
    assert set(cell) == {"mAP"} and 0.0 < cell["mAP"] <= 100.0
  # A single-label TFDS set stays single-label.
  with tfds.testing.mock_data(num_examples=4):
    _, multi = transfer.load_labelled("cifar10", "train")
  assert not multi


def test_report_plot_draws_untrained_floor_and_seed_error_bars():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [("psl (n=3)", {f"b{i}": {"top1": 10.0 * i, "top1_sd": 0.5 * i} for i in range(1, 6)}),
          ("e2e (n=1)", {f"b{i}": {"top1": 9.0 * i} for i in range(1, 6)})]
  floor = ("random", {f"b{i}": {"top1": 3.0 * i} for i in range(1, 6)})
  figure, axes = plt.subplots()
  report.draw(axes, rows, floor=floor)
  bars = axes.containers
  assert len(bars) == 1 and bars[0].get_label() == "psl (n=3) (mean ± sd)"
  segments = bars[0].lines[2][0].get_segments()  # the vertical error bars
  np.testing.assert_allclose([s[1][1] - s[0][1] for s in segments], [1.0, 2.0, 3.0, 4.0, 5.0])
  floor_line = [l for l in axes.get_lines() if l.get_label() == "random (untrained floor)"]
  assert floor_line and floor_line[0].get_linestyle() == "--"
  np.testing.assert_allclose(floor_line[0].get_ydata(), [3.0, 6.0, 9.0, 12.0, 15.0])
  assert axes.get_xlabel() == "block of the frozen backbone" and axes.get_ylabel() == "top1 (%)"
  plt.close(figure)



def _image_folder(root, classes=3, per_class=(6, 4), size=16):
  """train/<class>/*.png and test/<class>/*.png, each class a brightness level with noise."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, count in zip(("train", "test"), per_class):
    for c in range(classes):
      folder = os.path.join(root, split, str(c))
      os.makedirs(folder)
      for i in range(count):
        pixels = rng.integers(0, 60, (size, size, 3)) + 90 * c
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))
  return root


def _tree(path):
  return sorted(os.path.relpath(os.path.join(d, n), path)
                for d, _, names in os.walk(path) for n in names)


def test_transfer_to_a_folder_leaves_the_run_untouched(fake_run, tmp_path, capsys):
  import psl_tf  # pylint: disable=g-import-not-at-top
  digits = _image_folder(str(tmp_path / "other_data"))
  before = _tree(fake_run)
  out = str(tmp_path / "report")
  result = psl_tf.evaluate(fake_run, protocol="transfer", dataset=f"folder:{digits}",
                           output=out, write_to_runs=False, epochs=1, batch_size=8,
                           probe_inputs="features", probe_weight_decays=["5e-4", "5e-2"],
                           log=None, verbose=0)
  assert _tree(fake_run) == before  # nothing written into the run directory
  with open(result.paths["json"]) as f:
    table = json.load(f)
  assert os.path.dirname(result.paths["json"]) == out
  assert table["settings"]["dataset"] == f"folder:{digits}"
  assert table["settings"]["protocol"] == "transfer" and table["settings"]["num_classes"] == 3
  cells = table["rows"][0]["results"]
  assert sorted(cells) == ["b1", "b2", "b3", "b4", "b5"]
  assert all(cell["weight_decay"] in (5e-4, 5e-2) for cell in cells.values())
  with pytest.raises(ValueError, match="--write_to_runs=false needs --output"):
    psl_tf.evaluate(fake_run, protocol="transfer", dataset=f"folder:{digits}",
                    write_to_runs=False, log=None)
  # The command line: the same check, one line on stderr and exit 2, before any work.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import evaluate as cli  # pylint: disable=g-import-not-at-top
  flag_values = cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.evaluate", f"--workdir={fake_run}", "--protocol=transfer",
               f"--dataset=folder:{digits}", "--write_to_runs=false"])
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["psl_tf.evaluate"], flag_values)
  assert exit_info.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1 and "--write_to_runs=false needs --output" in lines[0]
  assert _tree(fake_run) == before
