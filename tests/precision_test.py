"""--precision: Keras mixed-precision policies in the stage-wise trainer.

Under a mixed policy the variables, BatchNorm statistics, logits and losses stay float32; under
mixed_float16 the loss is scaled by a LossScaleOptimizer and the update equals the float32
update within float16 rounding; `auto` picks bfloat16 only where the hardware has it.
"""

import os
import platform
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import distribute
from psl_tf import keras_private
from psl_tf import losses
from psl_tf import optim
from psl_tf import precision
from psl_tf import pretraining as pretrain
from psl_tf import stages
from psl_tf import trainer
from psl_tf import workdir as wd
from psl_tf.models import build_backbone
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import contrastive
from psl_tf.tasks import jigsaw
from psl_tf.tasks import rotation

SIZE = 16
BATCH = 8


def _rotation_batch(task, level):
  fn = task.example_fn(level, training=True)
  rng = np.random.default_rng(0)
  pairs = [fn(tf.constant(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),
              tf.constant(0, tf.int64), tf.constant([0, i], tf.int64)) for i in range(BATCH)]
  return tf.stack([p[0] for p in pairs]), tf.stack([p[1] for p in pairs])


def _stage_model(policy, mode="e2e", stage_index=1, task=None, lr=0.1):
  """A small StageModel built under `policy` (the policy is restored on return)."""
  stage = stages.make_stages(mode, 3)[stage_index - 1]
  task = task or rotation.RotationTask(ImageSpec(SIZE, SIZE + 2), head_hidden=16)
  with precision.policy_scope(policy):
    keras.utils.set_random_seed(1)  # not 0: see test_batched_pipeline_... in rotation_test
    backbone = build_backbone("cifar_resnet", depth=10, width=8)
    head = task.build_head(backbone.get_layer(f"b{stage.last}").output.shape[1:], stage.level)
    model = trainer.StageModel(backbone, task, stage, head)
    optimizer = precision.wrap_optimizer(optim.build_optimizer("sgd", lr, momentum=0.0))
    model.compile(optimizer=optimizer)
    optimizer.build(model.trained_variables())
  return model, task, stage


@pytest.mark.parametrize("name", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_policy_scope_sets_and_restores_the_global_policy(name):
  assert precision.current() == "float32"
  with precision.policy_scope(name) as resolved:
    assert resolved == name and precision.current() == name
  assert precision.current() == "float32"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_policy_keeps_variables_logits_bn_and_loss_in_float32(policy):
  model, task, stage = _stage_model(policy)
  compute = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[policy]
  convs = [l for l in keras_private.flatten_layers(model.backbone) if isinstance(l, keras.layers.Conv2D)]
  assert convs and all(l.compute_dtype == compute for l in convs)  # the policy took effect
  assert all(v.dtype == "float32" for v in model.backbone.weights + model.head.weights)
  bns = [l for l in keras_private.flatten_layers(model.backbone)
         if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and all(l.moving_mean.dtype == "float32" for l in bns)
  x, y = _rotation_batch(task, stage.level)
  assert model(x, training=False).dtype == tf.float32  # the logits layer is float32
  logs = model.train_on_batch(x, y, return_dict=True)
  assert np.isfinite(logs["loss"])
  assert model.loss_tracker.result().dtype == tf.float32
  assert all(v.dtype == "float32" for v in model.backbone.weights)


def test_nt_xent_similarities_are_float32_for_bfloat16_projections():
  rng = np.random.default_rng(0)
  z_a = tf.constant(rng.normal(size=(4, 8)), tf.bfloat16)
  z_b = tf.constant(rng.normal(size=(4, 8)), tf.bfloat16)
  logits, _ = losses.contrastive_logits(z_a, z_b, 0.1)
  assert logits.dtype == tf.float32
  assert losses.nt_xent(z_a, z_b, 0.1).dtype == tf.float32


def test_contrastive_and_jigsaw_heads_end_in_float32():
  with precision.policy_scope("mixed_bfloat16"):
    head = contrastive.build_projection_head((4, 4, 32), 16, 8, "proj")
    jig = jigsaw.JigsawTask(ImageSpec(32, 36), head_hidden=16, sizes=(4, 6, 8)).build_head(
        (2, 2, 32), 1)
  for model in (head, jig):
    out = model(tf.zeros((2, *model.input.shape[1:])))
    assert out.dtype == tf.float32


def _one_step_deltas(model, x, y, start):
  for v, w in zip(model.trained_variables(), start):
    v.assign(w)
  model.train_on_batch(x, y)
  return np.concatenate([(v.numpy() - w).ravel() for v, w in zip(model.trained_variables(),
                                                                  start)])


def test_float16_loss_scaled_step_matches_the_float32_step():
  """One SGD step under mixed_float16 (loss x 2^15 before the gradient, gradients / 2^15 in
  the optimizer) moves the weights as the float32 step does, within float16 rounding; and as
  an unscaled float16 step does, to float16 rounding of the few gradients that underflow
  without the scale (a power-of-two scale is exact otherwise). A missing scale or unscale
  would be off by a factor 32,768; a skipped step would not move at all."""
  m32, task, stage = _stage_model("float32")
  m16, _, _ = _stage_model("mixed_float16")
  plain16, _, _ = _stage_model("mixed_float16")
  plain16.optimizer = optim.build_optimizer("sgd", 0.1, momentum=0.0)  # no loss scaling
  plain16.optimizer.build(plain16.trained_variables())
  assert isinstance(m16.optimizer, keras.optimizers.LossScaleOptimizer)
  for model in (m16, plain16):
    model.backbone.set_weights(m32.backbone.get_weights())
    model.head.set_weights(m32.head.get_weights())
  x, y = _rotation_batch(task, stage.level)
  start = [v.numpy().copy() for v in m32.trained_variables()]
  d32 = _one_step_deltas(m32, x, y, start)
  d16 = _one_step_deltas(m16, x, y, start)
  unscaled = _one_step_deltas(plain16, x, y, start)
  assert float(m16.optimizer.dynamic_scale.numpy()) == 2.0 ** 15  # the step was not skipped
  assert np.linalg.norm(d32) > 0
  # float16 activations (11-bit mantissa) through BatchNorm with batch 8 give 5-20 % of
  # difference in the first layers' updates, depending on the initialisation (bfloat16, 8
  # bits, gives 4-8x more); a scale or unscale error would give a factor 32,768.
  assert np.linalg.norm(d16 - d32) / np.linalg.norm(d32) < 0.3
  cosine = d16 @ d32 / (np.linalg.norm(d16) * np.linalg.norm(d32))
  assert cosine > 0.95, cosine
  assert 0.85 < np.linalg.norm(d16) / np.linalg.norm(d32) < 1.15
  assert np.linalg.norm(d16 - unscaled) / np.linalg.norm(unscaled) < 0.01


def test_float16_step_with_non_finite_gradients_is_skipped_and_the_scale_halved():
  m16, task, stage = _stage_model("mixed_float16")
  x, y = _rotation_batch(task, stage.level)
  before = [v.numpy().copy() for v in m16.trained_variables()]
  m16.train_on_batch(x * np.float32("nan"), y)
  assert float(m16.optimizer.dynamic_scale.numpy()) == 2.0 ** 14
  assert all(np.array_equal(v.numpy(), b) for v, b in zip(m16.trained_variables(), before))


@pytest.mark.parametrize("flags,tpu,gpu,expected", [
    ({"avx512f", "avx512_bf16"}, False, None, "mixed_bfloat16"),
    ({"avx512f", "amx_bf16", "amx_tile"}, False, None, "mixed_bfloat16"),
    ({"avx2", "avx512f"}, False, None, "float32"),
    (set(), True, None, "mixed_bfloat16"),
    (set(), False, (8, 0), "mixed_bfloat16"),
    (set(), False, (7, 5), "mixed_float16"),
])
def test_auto_picks_bfloat16_only_where_the_hardware_has_it(flags, tpu, gpu, expected):
  assert precision.resolve("auto", flags=flags, tpu=tpu, gpu_compute_capability=gpu) == expected


_ONEDNN_PROBE = """
import os, psl_tf
from tensorflow.python.util import _pywrap_util_port
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"), _pywrap_util_port.IsMklEnabled())
"""


@pytest.mark.parametrize("user_setting", [None, "0", "1"])
def test_importing_psl_tf_turns_onednn_off_unless_the_user_set_it(user_setting):
  # A fresh process: TensorFlow reads the variable once, at its import. psl_tf used to set
  # it to 1, which crashed small shapes natively on CPUs without AVX-512 (issue 28), and
  # TensorFlow's own default (on with AVX-512) crashed them on an AVX-512/AMX CPU.
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if user_setting is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH", "")])
  out = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  assert out[0] == (user_setting or "0")
  if platform.machine() in ("x86_64", "AMD64"):  # oneDNN: x86
    assert out[1] == str(user_setting == "1")


def test_explicit_precision_is_taken_as_given_and_typos_are_refused():
  assert precision.resolve("mixed_float16", flags=set(), tpu=False) == "mixed_float16"
  with pytest.raises(ValueError, match="--precision"):
    precision.resolve("bf16")


def test_pretrain_run_under_bfloat16_restores_the_policy_and_records_it(tmp_path):
  config = config_lib.Config(
      task="rotation", dataset="demo", backbone="cifar_resnet", depth=10, width=8,
      image_size=16, head_hidden=16, batch_size=8, epochs=(1,), steps_per_epoch=2,
      mode="e2e", workdir=str(tmp_path), export=False, verbose=0,
      precision="mixed_bfloat16", heldout_split="none")
  summary = pretrain.run(config, distribute.make_strategy("one_device"), log=lambda m: None)
  assert summary["precision"] == "mixed_bfloat16"
  assert precision.current() == "float32"
  assert np.isfinite(summary["stages"][0]["final_loss"])
  weights = wd.stage_weights_path(str(tmp_path), 1)
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  wd.load_backbone_weights(backbone, weights)  # float32 weights, read by a float32 backbone


def test_float16_overflowing_gradients_are_skipped_without_a_non_finite_grad_norm():
  """A loss scale so large that the float16 gradients overflow: the optimizer skips the step
  and halves the scale, and the logged gradient norm (the divergence guard's input) stays
  finite, since a skipped step is float16 training's normal course, not a divergence."""
  model, task, stage = _stage_model("float32")
  with precision.policy_scope("mixed_float16"):
    keras.utils.set_random_seed(1)  # not 0: see test_batched_pipeline_... in rotation_test
    backbone = build_backbone("cifar_resnet", depth=10, width=8)
    head = task.build_head(backbone.get_layer(f"b{stage.last}").output.shape[1:], stage.level)
    m16 = trainer.StageModel(backbone, task, stage, head)
    optimizer = precision.wrap_optimizer(optim.build_optimizer("sgd", 0.1, momentum=0.0),
                                         initial_scale=2.0 ** 100)
    m16.compile(optimizer=optimizer)
    optimizer.build(m16.trained_variables())
  x, y = _rotation_batch(task, stage.level)
  before = [v.numpy().copy() for v in m16.trained_variables()]
  logs = m16.train_on_batch(x, y, return_dict=True)
  assert float(m16.optimizer.dynamic_scale.numpy()) == 2.0 ** 99
  assert all(np.array_equal(v.numpy(), b) for v, b in zip(m16.trained_variables(), before))
  assert np.isfinite(logs["loss"])
  if "grad_norm" in logs:
    assert np.isfinite(logs["grad_norm"])
