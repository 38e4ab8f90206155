"""oneDNN (issue 28, item 1): psl_tf turns TensorFlow's oneDNN kernels off unless the user
sets TF_ENABLE_ONEDNN_OPTS, so the shapes that crashed natively with them (batch 3 at width 8)
train, also on CPUs where TensorFlow would turn them on by itself; with them on, the one op
that crashes (the weight gradient of a 1x1 stride-2 convolution with fewer than 16 input
channels, `scripts/onednn_repro.py`) is refused in one line before training; and where a user
or the campaign turns them on, the campaign's settings give the same weights as without them
(heap corruption that does not crash would show here).

Each test backs one row of docs/RELIABILITY.md.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import testutil
from testutil import SMOKE
from psl_tf import distribute
from psl_tf import guards
from psl_tf import models
from psl_tf import pretraining
from psl_tf.evaluation import finetune


@pytest.mark.parametrize("name,kwargs,expected", [
    ("cifar_resnet", {"depth": 10, "width": 8}, [("conv3_1_proj_conv", 8)]),
    ("cifar_resnet", {"depth": 18, "width": 15}, [("conv3_1_proj_conv", 15)]),
    ("cifar_resnet", {"depth": 10, "width": 16}, []),
    ("cifar_resnet", {"depth": 50, "width": 8}, []),  # bottleneck: 32 channels into conv3
    ("resnet50", {}, []),
])
def test_the_unsafe_convolutions_are_the_narrow_strided_1x1_projections(name, kwargs, expected):
  backbone = models.build_backbone(name, **kwargs)
  assert guards.onednn_unsafe_convolutions(backbone) == expected


def test_the_refusal_names_the_layer_and_both_ways_out():
  backbone = models.build_backbone("cifar_resnet", depth=10, width=8)
  assert guards.onednn_unsafe_message(backbone, onednn_on=False) is None
  message = guards.onednn_unsafe_message(backbone, onednn_on=True)
  assert "\n" not in message
  assert "conv3_1_proj_conv has 8" in message
  assert "--width=16 or more" in message and "TF_ENABLE_ONEDNN_OPTS=0" in message
  wide = models.build_backbone("cifar_resnet", depth=10, width=16)
  assert guards.onednn_unsafe_message(wide, onednn_on=True) is None


def test_pretraining_and_finetuning_refuse_the_shape_before_training(tmp_path, monkeypatch):
  # oneDNN cannot be turned on inside this process (TensorFlow read the variable at import):
  # the switch the library reads is set instead.
  monkeypatch.setattr(pretraining.keras_private, "onednn_enabled", lambda: True)
  config = testutil.tiny_config(str(tmp_path / "run"))
  with pytest.raises(pretraining.ConfigError, match="conv3_1_proj_conv has 8"):
    pretraining.pretrain(config, distribute.make_strategy("one_device"))
  # Refused before the work directory is written: no flags.txt, no task files to clean up.
  assert not os.path.exists(tmp_path / "run") or not os.listdir(tmp_path / "run")
  backbone = models.build_backbone("cifar_resnet", depth=10, width=8)
  before = [np.array(v) for v in backbone.trainable_weights]
  images = tf.data.Dataset.from_tensor_slices(
      (np.zeros((8, 16, 16, 3), np.float32), np.arange(8) % 2)).batch(4)
  with pytest.raises(ValueError, match=r"conv3_1_proj_conv has 8.*: run with TF_ENABLE_ONEDNN"):
    finetune.finetune(backbone, images.repeat(), images, 2, 16, epochs=1, steps_per_epoch=1)
  assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, backbone.trainable_weights))
  # With oneDNN off nothing is refused.
  monkeypatch.setattr(pretraining.keras_private, "onednn_enabled", lambda: False)
  keras.utils.set_random_seed(0)
  assert pretraining.pretrain(config, distribute.make_strategy("one_device"))["stages"]


def _train(workdir, *args, onednn=None):
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if onednn is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = onednn
  return testutil.cli("psl_tf.train", f"--flagfile={SMOKE}", f"--workdir={workdir}",
                      "--heldout_split=none", "--noexport", *args, timeout=900, env=env)


@pytest.mark.slow  # a training run in a child process
def test_batch_3_at_width_8_trains_with_the_default_kernels(tmp_path):
  # With `import psl_tf` forcing TF_ENABLE_ONEDNN_OPTS=1 this died at the first step on the
  # reporter's AVX2 machine ("corrupted size vs. prev_size", SIGSEGV), and under TensorFlow's
  # own default (oneDNN on) on an AVX-512/AMX machine (SIGSEGV).
  result = _train(str(tmp_path / "run"), "--task=rotation", "--batch_size=3", "--width=8")
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(tmp_path / "run" / "stage_3" / "backbone.weights.h5")


@pytest.mark.slow
def test_campaign_settings_give_the_same_weights_with_onednn_on_and_off(tmp_path):
  # The campaign (cifar_resnet depth 10, width 16, batch 128) sets TF_ENABLE_ONEDNN_OPTS=1
  # itself. Two steps per stage, each setting in its own process (TensorFlow reads the
  # variable at import); oneDNN rounds differently, so equal to float tolerance, not bits.
  runs = {}
  for onednn in ("1", "0"):
    workdir = str(tmp_path / f"onednn_{onednn}")
    result = _train(workdir, "--task=rotation", "--width=16", "--batch_size=128",
                    "--image_size=32", "--steps_per_epoch=2", "--deterministic",
                    onednn=onednn)
    assert result.returncode == 0, result.stderr[-3000:]
    runs[onednn] = workdir
  for stage in (1, 2, 3):
    on = testutil.weights(os.path.join(runs["1"], f"stage_{stage}", "backbone.weights.h5"))
    off = testutil.weights(os.path.join(runs["0"], f"stage_{stage}", "backbone.weights.h5"))
    assert on.keys() == off.keys()
    assert all(np.all(np.isfinite(on[name])) for name in on)
    # Measured: 3e-8 after stage 1, 2e-5 after stage 2, 2e-4 after stage 3 (rounding,
    # amplified where a ReLU flips); corrupted memory would be far off.
    difference = np.sqrt(sum(np.sum((on[n] - off[n]) ** 2) for n in on))
    size = np.sqrt(sum(np.sum(on[n] ** 2) for n in on))
    assert difference / size < 2e-3, f"stage {stage}: relative difference {difference / size}"
    for name in on:
      np.testing.assert_allclose(on[name], off[name], atol=2e-2, err_msg=f"stage {stage} {name}")


@pytest.mark.slow  # two child processes
def test_with_onednn_on_the_crashing_shape_is_one_line_not_a_native_crash(tmp_path):
  probe = subprocess.run(
      [sys.executable, "-c", "from psl_tf import keras_private; "
       "print(keras_private.onednn_enabled())"],
      env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", PYTHONPATH=testutil.ROOT),
      capture_output=True, text=True, check=True)
  if probe.stdout.strip() != "True":
    pytest.skip("TF_ENABLE_ONEDNN_OPTS=1 does not turn oneDNN on here (not an x86 build)")
  result = _train(str(tmp_path / "run"), "--task=rotation", "--batch_size=3", "--width=8",
                  onednn="1")
  line = testutil.one_line_error(result, "psl_tf.train")
  assert "conv3_1_proj_conv has 8" in line and "TF_ENABLE_ONEDNN_OPTS=0" in line
  # A width-8 run trained without oneDNN is refused for fine-tuning with it, in one line too.
  workdir = str(tmp_path / "off")
  assert _train(workdir, "--task=rotation", onednn="0").returncode == 0
  result = testutil.cli(
      "psl_tf.evaluate", f"--workdir={workdir}", "--protocol=finetune", "--dataset=demo",
      "--label_fractions=0.5", "--epochs=1", "--steps_per_epoch=2",
      f"--output={tmp_path / 'eval'}", "--write_to_runs=false", timeout=600,
      env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1"))
  line = testutil.one_line_error(result, "psl_tf.evaluate")
  assert "conv3_1_proj_conv has 8" in line and line.endswith("run with TF_ENABLE_ONEDNN_OPTS=0")


@pytest.mark.slow  # two child processes importing TensorFlow
def test_the_reproduction_script_runs_the_op_with_each_setting():
  result = subprocess.run(
      [sys.executable, os.path.join(testutil.ROOT, "scripts", "onednn_repro.py"),
       "--channels=8", "--batches=3", "--sizes=32", "--kernels=1:2"],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith("| 1x1")]
  assert len(rows) == 1, result.stdout
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  assert cells[:5] == ["1x1", "2", "8", "3", "32"]
  # oneDNN off computes it; on, it crashes on the CPUs measured (docs/RELIABILITY.md) or, on
  # others, finishes with the reference gradient.
  assert cells[6] == "ok"
  assert cells[5] in ("SIGSEGV", "SIGABRT") or float(cells[7]) < 1e-5, rows[0]
  crashed = cells[5] != "ok"
  assert f"oneDNN on crashed {int(crashed)} of the 1 shapes psl_tf refuses" in result.stdout
