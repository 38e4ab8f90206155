"""The stage-wise train step: what gets gradients, what stays bit-identical, and that a
MirroredStrategy step equals a one-device step on the same global batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import optim
from psl_tf import stages
from psl_tf import trainer
from psl_tf.models import blocks
from psl_tf.models import build_backbone
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import rotation

SIZE = 16
BATCH = 8


def _batch(level, seed=0):
  task = rotation.RotationTask(ImageSpec(SIZE, SIZE + 2), head_hidden=16)
  fn = task.example_fn(level, training=True)
  rng = np.random.default_rng(seed)
  pairs = [fn(tf.constant(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)),
              tf.constant(0, tf.int64), tf.constant([seed, i], tf.int64)) for i in range(BATCH)]
  return task, tf.stack([p[0] for p in pairs]), tf.stack([p[1] for p in pairs])


def _snapshot(backbone):
  """Every variable (weights and BN statistics) of each block, as numpy."""
  return [[v.numpy().copy() for v in block.weights] for block in blocks.get_blocks(backbone)]


def _changed(before, after):
  return [not all(np.array_equal(a, b) for a, b in zip(bb, ab)) for bb, ab in zip(before, after)]


def _train_steps(mode, stage_index, steps=2, frozen_bn="inference", seed=0, run_eagerly=False):
  keras.utils.set_random_seed(seed)
  stage = stages.make_stages(mode, 3)[stage_index - 1]
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  task, x, y = _batch(stage.level)
  head = trainer.build_stage_head(backbone, task, stage)
  model = trainer.StageModel(backbone, task, stage, head, frozen_bn=frozen_bn)
  model.compile(optimizer=optim.build_optimizer("sgd", 0.1), run_eagerly=run_eagerly)
  before = _snapshot(backbone)
  model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=steps, epochs=1,
            verbose=0)
  return _changed(before, _snapshot(backbone)), model


@pytest.mark.parametrize("mode", ["psl", "sl", "e2e"])
def test_stage_head_reads_the_last_block_and_predicts_the_level(mode):
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  task = rotation.RotationTask(ImageSpec(SIZE, SIZE + 2), head_hidden=16)
  for stage in stages.make_stages(mode, 3):
    head = trainer.build_stage_head(backbone, task, stage)
    features = blocks.run_blocks(blocks.get_blocks(backbone), tf.zeros([2, SIZE, SIZE, 3]),
                                 1, stage.last, training=False)
    logits = head(features)
    assert logits.shape == (2, task.num_classes(stage.level)), (mode, stage.index)
    assert head.inputs[0].shape[-1] == features.shape[-1], (mode, stage.index)


@pytest.fixture(scope="module")
def psl_stage2():
  """(changed blocks, model) after two steps of PSL stage 2, shared by the tests that only
  look at it."""
  return _train_steps("psl", 2)


def test_psl_stage2_freezes_b1_and_never_computes_b5(psl_stage2):
  changed, model = psl_stage2
  assert changed == [False, True, True, True, False]
  # b5 is not merely left unchanged: the traced train step has no op of it (cifar_resnet's
  # b5 layers are conv5_*), while b1..b4's layers are all there.
  _, x, y = _batch(2)
  graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
  names = " ".join(op.name for op in graph.get_operations())
  assert "conv5_" not in names
  for layer in ("conv1", "conv2_1", "conv3_1", "conv4_1"):
    assert f"{layer}" in names, layer
  assert model.head.output.shape[-1] == 4  # level 2: four angles


def test_psl_stage3_freezes_b1_and_b2():
  changed, _ = _train_steps("psl", 3)
  assert changed == [False, False, True, True, True]


def test_psl_f_updates_every_block_below():
  changed, _ = _train_steps("psl_f", 2)
  assert changed == [True, True, True, True, False]


def test_greedy_stage2_trains_only_b3_b4():
  changed, _ = _train_steps("greedy", 2)
  assert changed == [False, False, True, True, False]


def test_sl_uses_the_hardest_level_at_every_stage():
  # One eager step per stage: it trains on the level-3 labels (the traced step, which costs
  # 4x the CPU to build, is what the tests above check).
  for index in (1, 2, 3):
    _, model = _train_steps("sl", index, steps=1, run_eagerly=True)
    assert model.head.output.shape[-1] == 8


def test_frozen_batchnorm_modes():
  # batch_stats: frozen b1 normalises with batch statistics and its moving averages move,
  # but its weights still get no gradient.
  changed, model = _train_steps("psl", 2, frozen_bn="batch_stats")
  assert changed[0]
  b1 = blocks.get_blocks(model.backbone)[0]
  kernels_only = [v for v in b1.trainable_weights if "kernel" in v.path]
  keras.utils.set_random_seed(0)
  fresh = build_backbone("cifar_resnet", depth=10, width=8)
  fresh_kernels = [v for v in blocks.get_blocks(fresh)[0].trainable_weights if "kernel" in v.path]
  for a, b in zip(kernels_only, fresh_kernels):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_only_stage_and_head_variables_get_gradients(psl_stage2):
  _, model = psl_stage2
  trained = {id(v) for v in model.trained_variables()}
  bs = blocks.get_blocks(model.backbone)
  assert all(id(v) in trained for i in (1, 2, 3) for v in bs[i].trainable_variables)
  assert not any(id(v) in trained for i in (0, 4) for v in bs[i].weights)
  assert all(id(v) in trained for v in model.head.trainable_variables)


def _one_step_under(strategy, x, y, init_weights=None):
  """One SGD step of PSL stage 2 (sync BN) from `init_weights`; returns loss and weights."""
  with strategy.scope():
    keras.utils.set_random_seed(1)
    backbone = build_backbone("cifar_resnet", depth=10, width=8)
    blocks.set_synchronized_batchnorm(backbone)
    stage = stages.make_stages("psl", 3)[1]
    task = rotation.RotationTask(ImageSpec(SIZE, SIZE + 2), head_hidden=16)
    head = trainer.build_stage_head(backbone, task, stage)
    blocks.set_synchronized_batchnorm(head)
    model = trainer.StageModel(backbone, task, stage, head)
    model.compile(optimizer=optim.build_optimizer("sgd", 0.5))
  variables = backbone.weights + head.weights
  if init_weights is not None:
    for v, w in zip(variables, init_weights):
      v.assign(w)
  before = [v.numpy() for v in variables]
  history = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history
  return history["loss"][0], before, [v.numpy() for v in variables]


def test_mirrored_step_equals_one_device_step(two_replica_strategy):
  _, x, y = _batch(level=2, seed=3)
  one = tf.distribute.OneDeviceStrategy("/cpu:0")
  loss_one, init, weights_one = _one_step_under(one, x, y)
  mirrored = two_replica_strategy
  assert mirrored.num_replicas_in_sync == 2
  loss_two, _, weights_two = _one_step_under(mirrored, x, y, init)
  assert loss_two == pytest.approx(loss_one, rel=1e-4)
  moved = [not np.array_equal(a, b) for a, b in zip(init, weights_one)]
  assert sum(moved) > len(moved) // 3  # the step really updated the stage
  for a, b in zip(weights_one, weights_two):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_moving_statistics_are_one_set_over_replicas(two_replica_strategy):
  # Without sync BN each replica normalises with its own half of the batch. Keras 3 would also
  # let each replica keep its own moving statistics (replica 0's being the ones saved), so
  # after a resume from saved weights replica 1 would use other statistics than before.
  _, x, y = _batch(level=2, seed=4)

  def step_under(strategy):
    with strategy.scope():
      keras.utils.set_random_seed(1)
      backbone = build_backbone("cifar_resnet", depth=10, width=8)
      stage = stages.make_stages("psl", 3)[1]
      task = rotation.RotationTask(ImageSpec(SIZE, SIZE + 2), head_hidden=16)
      head = trainer.build_stage_head(backbone, task, stage)
      model = trainer.StageModel(backbone, task, stage, head)
      model.compile(optimizer=optim.build_optimizer("sgd", 0.1))
    before = {v.path: v.numpy() for v in blocks.moving_statistics(model)}
    model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    return model, before

  mirrored = two_replica_strategy
  model, before = step_under(mirrored)
  statistics = blocks.moving_statistics(model)
  # B2-B4 (layers conv2_* .. conv4_*) and the head's hidden layer; not the frozen B1 or B5.
  owners = {v.path.split("_")[0] for v in statistics}
  assert {"conv2", "conv3", "conv4", "batch"} == owners
  assert all(not np.array_equal(before[v.path], v.numpy()) for v in statistics)  # updated
  for variable in statistics:
    copies = [c.numpy() for c in mirrored.experimental_local_results(variable.value)]
    np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
  # The first BN of B2 sees the frozen B1's output, the same on both replicas as on one
  # device, so its moving mean averaged over the two halves equals the whole batch's.
  one_model, _ = step_under(tf.distribute.OneDeviceStrategy("/cpu:0"))
  first = [v for v in statistics if v.path == "conv2_1_bn1/moving_mean"][0]
  one_first = [v for v in blocks.moving_statistics(one_model) if v.path == first.path][0]
  np.testing.assert_allclose(first.numpy(), one_first.numpy(), rtol=1e-5, atol=1e-6)
