"""oneDNN (issue 28, item 1): psl_tf turns TensorFlow's oneDNN kernels off unless the user
sets TF_ENABLE_ONEDNN_OPTS, so the shapes that crashed natively with them (batch 3 at width 8)
train, also on CPUs where TensorFlow would turn them on by itself; and where a user or the campaign turns them on, the campaign's settings give the
same weights as without them (heap corruption that does not crash would show here).

Each test backs one row of docs/RELIABILITY.md.
"""

import os

import numpy as np
import pytest

import testutil
from testutil import SMOKE


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
