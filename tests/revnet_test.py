"""RevNet-50: invertible units, b1..b5 shapes and size, reversible backprop, a smoke run."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import workdir as wd
from psl_tf.models import blocks
from psl_tf.models import build_backbone
from psl_tf.models import revnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _units(backbone):
  """Every ReversibleUnit of a backbone, b2 to b5."""
  stages = [backbone.get_layer(f"b{i}").get_layer(f"rev{i}") for i in (2, 3, 4, 5)]
  return [unit for stage in stages for unit in stage.units]


def _randomise_batchnorm(backbone, seed=0):
  """Random BN scales, offsets and moving statistics, so no unit is near the identity and no
  ReLU sits exactly on its kink (the zero-padded channels after a transition would, with
  beta = 0, and make float32 rounding flip ReLU derivatives)."""
  rng = np.random.default_rng(seed)
  values = []
  for v in backbone.weights:
    name = v.path.rsplit("/", 1)[-1]
    if name in ("gamma", "moving_variance"):
      values.append(rng.uniform(0.5, 1.5, v.shape))
    elif name in ("beta", "moving_mean"):
      values.append(rng.normal(0.0, 0.3, v.shape))
    else:
      values.append(v.numpy())
  backbone.set_weights(values)


@pytest.fixture(scope="module")
def small():
  keras.utils.set_random_seed(0)
  backbone = revnet.revnet50(filters_factor=1)
  _randomise_batchnorm(backbone)
  return backbone


@pytest.fixture(scope="module")
def small_recompute():
  """The memory-saving RevNet-50 (factor 1) from the registry, built once for the tests that
  only call or trace it (a build takes seconds). A test that freezes blocks unfreezes them."""
  keras.utils.set_random_seed(5)
  return build_backbone("revnet50", filters_factor=1, recompute=True)


def test_every_unit_is_invertible_in_inference_mode(small):
  units = _units(small)
  assert len(units) == sum(revnet.UNITS) == 16
  rng = np.random.default_rng(1)
  for unit in units:
    x = tf.constant(rng.normal(size=(2, 4, 4, unit.channels)), tf.float32)
    y = unit(x, training=False)
    # The unit really changes its input (else inverting it proves nothing) ...
    assert float(tf.reduce_max(tf.abs(y - x))) > 0.1
    # ... and its inverse gives the input back.
    np.testing.assert_allclose(unit.inverse(y, training=False).numpy(), x.numpy(), atol=1e-5)


def test_training_mode_inverse_uses_batch_statistics_and_updates_nothing(small):
  unit = _units(small)[5]
  x = tf.constant(np.random.default_rng(2).normal(size=(4, 3, 3, unit.channels)), tf.float32)
  before = [v.numpy().copy() for v in small.non_trainable_weights]
  y = unit(x, training=True, update_stats=False)
  np.testing.assert_allclose(unit.inverse(y, training=True).numpy(), x.numpy(), atol=1e-5)
  for b, v in zip(before, small.non_trainable_weights):
    np.testing.assert_array_equal(b, v.numpy())


def test_block_shapes_at_224_and_parameter_count():
  backbone = revnet.revnet50(filters_factor=4, input_shape=(224, 224, 3))
  shapes = {name: tuple(backbone.get_layer(name).output.shape[1:]) for name in blocks.BLOCK_NAMES}
  assert shapes == {"b1": (112, 112, 256), "b2": (56, 56, 256), "b3": (28, 28, 512),
                    "b4": (14, 14, 1024), "b5": (7, 7, 2048)}
  # Each unit: 17 C^2 / 64 kernel weights (1x1 C/2->C/8, 3x3 C/8->C/8, 1x1 C/8->C/2) and
  # 3 BN layers on C/2 + C/8 + C/8 channels with 4 values each. Plus root conv, final BN.
  widths = [c for c, n in zip((256, 512, 1024, 2048), revnet.UNITS) for _ in range(n)]
  expected = 7 * 7 * 3 * 256 + sum(17 * c * c // 64 + 3 * c for c in widths) + 4 * 2048
  assert backbone.count_params() == expected == 5_435_392
  # Recorded beside ResNet-50's 23,561,152 (same block widths; see the revnet docstring).
  assert build_backbone("resnet50").count_params() == 23_561_152


def test_blocks_are_functional_sub_models_with_open_spatial_size(small_recompute):
  backbone = small_recompute
  for name, block in zip(blocks.BLOCK_NAMES, blocks.get_blocks(backbone)):
    assert isinstance(block, keras.Model) and block.name == name
    assert block.input.shape[1:3] == (None, None)
  out = backbone(tf.zeros([1, 64, 64, 3]))
  assert [tuple(out[n].shape) for n in blocks.BLOCK_NAMES] == [
      (1, 32, 32, 64), (1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256), (1, 2, 2, 512)]


def test_bad_filters_factor_is_a_value_error():
  with pytest.raises(ValueError, match="filters_factor"):
    revnet.revnet50(filters_factor=0)


def _gradients(backbone, x, use_function):
  def step():
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = backbone(x, training=True)
      # Every block's output enters the loss, so gradients also arrive at stage outputs
      # from outside the reversible chain (the b2..b4 outputs feed the next block too).
      loss = tf.add_n([tf.reduce_sum(tf.sin(out[n])) for n in blocks.BLOCK_NAMES])
    return tape.gradient(loss, backbone.trainable_variables + [x])
  return tf.function(step)() if use_function else step()


def _count_reversible_backward(monkeypatch):
  calls = []
  backward = revnet._reversible_backward  # pylint: disable=protected-access
  monkeypatch.setattr(revnet, "_reversible_backward",
                      lambda *args: calls.append(1) or backward(*args))
  return calls


def _assert_close_gradients(names, expected, got, tolerance):
  """Each gradient within `tolerance` of the largest entry of the reference gradient."""
  for name, e, g in zip(names, expected, got):
    assert g is not None, name
    scale = float(tf.reduce_max(tf.abs(e)))
    assert scale > 0, name
    assert float(tf.reduce_max(tf.abs(e - g))) <= tolerance * scale, name


def _assert_moving_averages_moved_once(plain, memory_saving, initial):
  """BatchNorm moving averages moved, and by as much as without recomputation (a second
  update in the backward pass would move them further)."""
  for a, b, start in zip(plain.non_trainable_weights, memory_saving.non_trainable_weights,
                         initial):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.numpy(), start), a.path


@pytest.mark.parametrize("use_function", [
    False, pytest.param(True, marks=pytest.mark.slow)])
def test_recompute_gives_the_same_backbone_gradients(monkeypatch, use_function):
  """In float64, where the reversible backward pass must agree with ordinary backprop up to
  rounding. (In float32 this tiny backbone amplifies rounding: at 16 px b5 is 1x1 and its
  BatchNorm sees 4 values; the well-conditioned float32 check is the stage test below.)"""
  calls = _count_reversible_backward(monkeypatch)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float64")
  try:
    keras.utils.set_random_seed(3)
    plain = revnet.revnet50(filters_factor=1)
    memory_saving = revnet.revnet50(filters_factor=1, recompute=True)
    _randomise_batchnorm(plain)
    memory_saving.set_weights(plain.get_weights())
    initial = [v.numpy().copy() for v in plain.non_trainable_weights]
    x = tf.random.stateless_uniform([4, 16, 16, 3], seed=[1, 2], dtype="float64")
    expected = _gradients(plain, x, use_function)
    got = _gradients(memory_saving, x, use_function)
  finally:
    keras.config.set_dtype_policy(previous)
  assert len(calls) == 4  # the reversible backward pass ran once per stage (b2..b5)
  names = [v.path for v in plain.trainable_variables] + ["input"]
  # 1e-6 of the largest entry: rounding in float64 (graph-mode kernels sum in other orders),
  # and six orders below what a wrong term in the backward pass gives.
  _assert_close_gradients(names, expected, got, 1e-6)
  _assert_moving_averages_moved_once(plain, memory_saving, initial)


@pytest.mark.parametrize("dtype,tolerance", [("float64", 1e-9), ("float32", 1e-4)])
def test_recompute_gives_the_same_stage_gradients_in_a_tf_function(monkeypatch, dtype,
                                                                   tolerance):
  """One stage of four units, traced as Keras traces `train_step`, at float tolerance."""
  calls = _count_reversible_backward(monkeypatch)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(dtype)
  try:
    keras.utils.set_random_seed(4)
    x = tf.random.stateless_normal([8, 6, 6, 32], seed=[3, 4], dtype=dtype)
    stages = []
    for recompute in (False, True):
      stage = revnet.ReversibleStage(32, 4, recompute=recompute)
      stage(x)
      stages.append(stage)
    _randomise_batchnorm(stages[0])
    stages[1].set_weights(stages[0].get_weights())
    initial = [v.numpy().copy() for v in stages[0].non_trainable_weights]

    def gradients(stage):
      @tf.function
      def step():
        with tf.GradientTape() as tape:
          tape.watch(x)
          loss = tf.reduce_sum(tf.sin(stage(x, training=True)))
        return tape.gradient(loss, stage.trainable_variables + [x])
      return step()

    expected, got = gradients(stages[0]), gradients(stages[1])
  finally:
    keras.config.set_dtype_policy(previous)
  assert len(calls) == 1
  _assert_close_gradients([v.path for v in stages[0].trainable_variables] + ["input"],
                          expected, got, tolerance)
  _assert_moving_averages_moved_once(stages[0], stages[1], initial)


def test_inference_and_frozen_blocks_take_the_ordinary_path(monkeypatch, small_recompute):
  monkeypatch.setattr(revnet, "run_reversible",
                      lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
  backbone = small_recompute
  backbone(tf.zeros([2, 16, 16, 3]), training=False)
  try:
    for block in blocks.get_blocks(backbone):
      block.trainable = False
    backbone(tf.zeros([2, 16, 16, 3]), training=True)
  finally:
    for block in blocks.get_blocks(backbone):
      block.trainable = True


@pytest.mark.slow
def test_rotation_psl_smoke_run_with_revnet(tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-m", "psl_tf.train", "--task=rotation", "--mode=psl",
       "--backbone=revnet50", "--filters_factor=1", "--recompute", "--dataset=demo",
       "--image_size=32", "--head_hidden=16", "--batch_size=4", "--epochs=1",
       "--steps_per_epoch=1", "--verbose=0", f"--workdir={workdir}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--backbone=revnet50" in open(os.path.join(workdir, "flags.txt")).read()
  for k in (1, 2, 3):
    # Keras' own format: a backbone built the same way loads it directly.
    wd.load_run(workdir, k).build_backbone().load_weights(
        os.path.join(workdir, f"stage_{k}", "backbone.weights.h5"))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["backbone"] == "revnet50"
  assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
  assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])
  served = tf.saved_model.load(os.path.join(workdir, "export")).signatures["serving_default"]
  features = served(images=tf.zeros([1, 32, 32, 3], tf.uint8))
  assert features["b5"].shape == (1, 1, 1, 512) and features["b5_pool"].shape == (1, 512)


def test_keras_file_round_trip_and_seeded_initialisation(tmp_path, small):
  keras.utils.set_random_seed(3)
  a = revnet.revnet50(filters_factor=1)
  keras.utils.set_random_seed(3)
  b = revnet.revnet50(filters_factor=1)
  c = small  # built after set_random_seed(0); its BatchNorm was randomised, not its kernels
  kernels = lambda m: [v.numpy() for v in m.weights if "kernel" in v.path]
  assert all(np.array_equal(x, y) for x, y in zip(kernels(a), kernels(b)))
  assert not np.array_equal(kernels(a)[1], kernels(c)[1])
  # Same-shaped convolutions must not start from identical weights.
  shapes = {}
  for kernel in kernels(a):
    shapes.setdefault(kernel.shape, []).append(kernel)
  assert all(not np.array_equal(group[0], group[1]) for group in shapes.values() if len(group) > 1)
  path = str(tmp_path / "revnet.keras")
  a.save(path)
  loaded = keras.models.load_model(path)
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
  np.testing.assert_allclose(loaded(x, training=False)["b5"], a(x, training=False)["b5"],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_known", [True, False])
def test_argmax_max_pool_equals_max_pooling2d(batch_known):
  """The memory-saving pool (int32 indices when the batch is known, int64 otherwise) gives
  MaxPooling2D's values and gradients; in inference it is MaxPooling2D."""
  x = tf.random.stateless_normal([3, 15, 14, 8], seed=[5, 6])
  w = tf.random.stateless_normal([3, 8, 7, 8], seed=[5, 7])
  plain = keras.layers.MaxPooling2D(3, 2, padding="same")
  saving = revnet.MaxPool()
  spec = tf.TensorSpec([3 if batch_known else None, 15, 14, 8])

  def run(layer):
    @tf.function(input_signature=[spec])
    def step(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * w)
      return y, tape.gradient(loss, x)
    return step(x)

  (y0, g0), (y1, g1) = run(plain), run(saving)
  np.testing.assert_array_equal(y1.numpy(), y0.numpy())
  np.testing.assert_allclose(g1.numpy(), g0.numpy(), rtol=1e-6, atol=1e-6)
  assert float(tf.reduce_max(tf.abs(g0))) > 0
  np.testing.assert_array_equal(saving(x, training=False).numpy(), y0.numpy())


def test_fused_recompute_batchnorm_equals_keras_batchnorm():
  """The fused path of `update_stats=False` normalises and differentiates as Keras' training
  mode does (batch statistics, biased variance), and moves no moving average."""
  x = tf.random.stateless_normal([4, 5, 5, 8], seed=[7, 8]) * 3.0 + 1.0
  w = tf.random.stateless_normal([4, 5, 5, 8], seed=[7, 9])
  bn = revnet.BatchNorm(epsilon=1e-5)
  bn.build(x.shape)
  bn.gamma.assign(tf.linspace(0.5, 1.5, 8))
  bn.beta.assign(tf.linspace(-0.3, 0.3, 8))

  def run(update_stats):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(bn(x, training=True, update_stats=update_stats) * w)
    return [loss] + tape.gradient(loss, [x, bn.gamma, bn.beta])

  stats = [v.numpy().copy() for v in bn.non_trainable_weights]
  fused = run(False)
  for before, v in zip(stats, bn.non_trainable_weights):
    np.testing.assert_array_equal(before, v.numpy())
  reference = run(True)
  for f, r in zip(fused, reference):
    np.testing.assert_allclose(f.numpy(), r.numpy(), rtol=1e-4, atol=1e-5)


def _saved_bytes_per_image(backbone, size=64, batches=(2, 4)):
  """Bytes per image of forward-pass tensors that the backward pass reads, i.e. what a
  training step has to keep from its forward pass; from the traced graph, so exact and
  independent of the executor's schedule and the allocator's rounding."""
  totals = []
  for batch in batches:
    images = tf.random.stateless_uniform([batch, size, size, 3], seed=[8, batch])
    saved = []

    @tf.function
    def step():
      graph = tf.compat.v1.get_default_graph()
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(backbone(images, training=True)["b5"]))
      forward = set(graph.get_operations())
      grads = tape.gradient(loss, backbone.trainable_variables)
      kept = {t.ref() for op in graph.get_operations() if op not in forward
              for t in op.inputs if t.op in forward}
      saved.append(sum(t.deref().shape.num_elements() * t.deref().dtype.size for t in kept
                       if t.deref().dtype != tf.resource))
      return grads

    step.get_concrete_function()
    totals.append(saved[0])
  return (totals[1] - totals[0]) / (batches[1] - batches[0])


def test_recompute_keeps_no_reversible_activation_for_the_backward_pass(small, small_recompute):
  """What --recompute is for: the forward-pass tensors a training step keeps, per added
  image, shrink to the stage outputs and the stem pool's argmax. The 224 px memory
  measurement is scripts/bench_revnet_memory.py (docs/RESULTS.md). (The steps are only
  traced, never run: the shared backbones keep their weights.)"""
  per_image = {}
  for backbone in (small, small_recompute):
    recompute = backbone.get_layer("b2").get_layer("rev2").recompute
    per_image[recompute] = _saved_bytes_per_image(backbone)
  assert sorted(per_image) == [False, True]
  # At 64 px, factor 1: plain keeps the 32x32x64 root output, the pool output and every
  # unit's activations; recompute keeps the pool's int32 argmax, each stage's output, the
  # standardised image for the root kernel's gradient and the final BatchNorm's input.
  # Measured: 0.24 of plain (0.48 before the stem pool kept only its argmax).
  assert 0 < per_image[True] <= 0.3 * per_image[False], per_image
