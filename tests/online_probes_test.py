"""Online stop-gradient probes as a callback during a Keras fit."""

import os

import keras
import numpy as np
import pytest

from psl_tf import data
from psl_tf.evaluation import online_probes
from psl_tf.evaluation import probes
from psl_tf.models import build_backbone


def test_probes_learn_during_fit_and_leave_the_backbone_alone(tmp_path):
  keras.utils.set_random_seed(0)
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  before = probes.backbone_snapshot(backbone)
  callback = online_probes.OnlineProbes(
      backbone, last_block=3, train_source=data.load_source("demo", "train"), num_classes=10,
      image_size=24, resize=27, batch_size=32, eval_source=data.load_source("demo", "test"),
      eval_batches=4, learning_rate=0.1, logdir=str(tmp_path / "tb"))
  # Any fit drives the callback; a trivial model keeps the test about the probes.
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer="sgd", loss="mse")
  x = np.zeros((8, 2), np.float32)
  history = model.fit(x, x[:, :1], batch_size=1, epochs=3, verbose=0,
                      callbacks=[callback]).history
  for name in ("b1", "b2", "b3"):
    assert len(history[f"probe_{name}"]) == 3 and len(history[f"val_probe_{name}"]) == 3
  assert "probe_b4" not in history  # blocks above the stage are not computed
  # 24 steps of batch 32 on 10 demo photographs: well above the 10% of chance.
  assert max(history["val_probe_b1"][-1], history["val_probe_b2"][-1]) > 0.3, history
  assert len(callback.history) == 3 and callback.history[-1]["epoch"] == 3
  assert os.listdir(tmp_path / "tb")
  for a, b in zip(before, probes.backbone_snapshot(backbone)):
    np.testing.assert_array_equal(a, b)


def test_unlabelled_data_is_refused():
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  with pytest.raises(ValueError, match="labelled"):
    online_probes.OnlineProbes(backbone, 2, data.load_source("demo", "train"), None, 16, 18)


def test_one_callback_follows_the_stages_it_is_fitted_in(tmp_path):
  import types  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  callback = online_probes.OnlineProbes(
      backbone, None, data.load_source("demo", "train"), 10, 16, 18, batch_size=8,
      logdir=str(tmp_path / "tb"))
  x = np.zeros((2, 2), np.float32)
  seen = []
  for index, last in ((1, 2), (2, 4)):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.stage = types.SimpleNamespace(index=index, last=last)  # as StageModel.stage
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, x[:, :1], batch_size=1, epochs=1, verbose=0, callbacks=[callback])
    seen.append(sorted(k for k in history.history if k.startswith("probe_")))
  assert seen == [["probe_b1", "probe_b2"], ["probe_b1", "probe_b2", "probe_b3", "probe_b4"]]
  assert [h["stage"] for h in callback.history] == [1, 2]
  assert sorted(os.listdir(tmp_path / "tb")) == ["stage_1", "stage_2"]


def test_merge_history_replaces_resumed_epochs():
  old = {"stages": [], "online_probes": [{"stage": 1, "epoch": 1, "probe_b1": 0.1},
                                         {"stage": 1, "epoch": 2, "probe_b1": 0.2}]}
  new = [{"stage": 1, "epoch": 2, "probe_b1": 0.5}, {"stage": 2, "epoch": 1, "probe_b1": 0.6}]
  merged = online_probes.merge_history(old, new)["online_probes"]
  assert [(h["stage"], h["epoch"], h["probe_b1"]) for h in merged] == [
      (1, 1, 0.1), (1, 2, 0.5), (2, 1, 0.6)]


def test_for_run_needs_labels_and_finds_the_test_split(tmp_path):
  callback = online_probes.for_run(data.load_source("demo", "train"), "demo", None, 16, 18, 8,
                                   str(tmp_path / "tb"))
  assert callback.eval_source is not None and callback.eval_source.num_examples == 200
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = tmp_path / "flat"
  images.mkdir()
  for i in range(2):
    Image.new("RGB", (8, 8), (i * 90, 0, 0)).save(images / f"{i}.png")
  unlabelled = data.load_source(f"folder:{images}", "train")
  with pytest.raises(ValueError, match="needs class labels"):
    online_probes.for_run(unlabelled, f"folder:{images}", None, 16, 18, 8, None)


@pytest.mark.slow
def test_train_cli_with_online_probes_writes_summary(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "psl_tf.train", "--task=rotation", "--epochs=1",
       "--steps_per_epoch=2", "--image_size=32", "--depth=10", "--width=8", "--batch_size=16",
       "--export=false", "--verbose=0", "--online_probes", f"--workdir={run}"],
      capture_output=True, text=True, cwd=root, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(run / "summary.json") as f:
    history = json.load(f)["online_probes"]
  assert [(h["stage"], h["epoch"]) for h in history] == [(1, 1), (2, 1), (3, 1)]
  assert "probe_b3" in history[0] and "probe_b4" not in history[0] and "val_probe_b5" in history[2]
  assert sorted(os.listdir(run / "logs" / "online_probes")) == ["stage_1", "stage_2", "stage_3"]
