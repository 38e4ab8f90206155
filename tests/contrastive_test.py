"""SimCLR and MoCo v2 ladders: the key encoder's EMA and lack of gradient, the FIFO queue
(also across replicas), checkpoint round trips, and CLI smoke runs in psl mode."""

import json
import os
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import workdir as wd
from psl_tf import optim
from psl_tf import stages
from psl_tf import trainer
from psl_tf.models import build_backbone
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import build_task
from psl_tf.tasks import mocov2
from psl_tf.tasks import simclr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "flags", "smoke.flags")
SIZE = 16
BATCH = 8


def _batch(task, level, seed=0):
  fn = task.example_fn(level, training=True)
  rng = np.random.default_rng(seed)
  pairs = [fn(tf.constant(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)),
              tf.constant(0, tf.int64), tf.constant([seed, i], tf.int64)) for i in range(BATCH)]
  return tf.stack([p[0] for p in pairs]), tf.stack([p[1] for p in pairs])


def _model(task, stage_index=2, mode="psl", seed=0):
  keras.utils.set_random_seed(seed)
  stage = stages.make_stages(mode, 3)[stage_index - 1]
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  head = task.build_head(backbone.get_layer(f"b{stage.last}").output.shape[1:], stage.level)
  model = trainer.StageModel(backbone, task, stage, head)
  optimizer = optim.build_optimizer("sgd", 0.5)
  model.compile(optimizer=optimizer)
  optimizer.build(model.trained_variables())
  return model, stage


def _moco(queue_size=20, key_momentum=0.9, **kwargs):
  return mocov2.MoCoV2Task(ImageSpec(SIZE, SIZE + 2), head_hidden=16, queue_size=queue_size,
                           key_momentum=key_momentum, proj_dim=8, **kwargs)


def _step(model, x, y):
  """One train step through Keras fit; returns the logs."""
  history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=1,
                      epochs=1, verbose=0)
  return {k: v[-1] for k, v in history.history.items()}


def _numpy(variables):
  return [v.numpy().copy() for v in variables]


# ---- SimCLR ------------------------------------------------------------------------------

def test_simclr_example_forward_and_step():
  task = simclr.SimCLRTask(ImageSpec(SIZE, SIZE + 2), head_hidden=0, proj_dim=8)
  x, y = _batch(task, 2)
  assert x.shape == (BATCH, 2, SIZE, SIZE, 3)
  model, stage = _model(task, 2)
  # head_hidden=0: the MLP is as wide as the stage output (b4 of width-8 cifar_resnet: 32).
  assert model.head.layers[2].units == model.head.input.shape[-1] == 32
  out = model(x, training=False)
  assert out.shape == (BATCH, 2, 8)
  before = _numpy(model.blocks[0].weights)
  logs = _step(model, x, y)
  assert np.isfinite(logs["loss"]) and 0 <= logs["accuracy"] <= 1
  assert all(np.array_equal(a, b) for a, b in zip(before, _numpy(model.blocks[0].weights)))
  assert stage.level == 2


def test_simclr_learning_rate_scaling():
  task = simclr.SimCLRTask()
  assert task.learning_rate(0.3, 512) == pytest.approx(0.6)
  assert simclr.SimCLRTask(lr_scaling="none").learning_rate(0.3, 512) == pytest.approx(0.3)
  assert simclr.SimCLRTask(lr_scaling="sqrt").learning_rate(0.1, 400) == pytest.approx(2.0)
  assert build_task("rotation").learning_rate(0.3, 512) == 0.3  # other tasks unchanged
  with pytest.raises(ValueError, match="lr_scaling"):
    simclr.SimCLRTask(lr_scaling="cubic")


# ---- MoCo v2 -----------------------------------------------------------------------------

def test_moco_key_encoder_is_an_ema_and_gets_no_gradient():
  task = _moco()
  model, _ = _model(task, 2)
  x, y = _batch(task, 2)
  pairs = mocov2.ema_pairs(model)
  key_vars = [k for k, _ in pairs]
  trained_ids = {id(v) for v in model.trained_variables()}
  assert key_vars and not any(id(k) in trained_ids for k, _ in pairs)
  # Key copies start equal to the query weights.
  for k, q in pairs:
    np.testing.assert_array_equal(k.numpy(), q.numpy())
  with tf.GradientTape() as tape:
    loss = task.loss(y, model(x, training=True))
  grads = tape.gradient(loss, key_vars + model.trained_variables())
  assert all(g is None for g in grads[:len(key_vars)])
  assert any(g is not None for g in grads[len(key_vars):])

  for _ in range(2):
    key_before = _numpy(key_vars)
    _step(model, x, y)
    query_after = _numpy([q for _, q in pairs])
    moved = 0
    for k, old, q in zip(key_vars, key_before, query_after):
      np.testing.assert_allclose(k.numpy(), 0.9 * old + 0.1 * q, rtol=1e-5, atol=1e-6)
      moved += int(not np.array_equal(old, q))
    assert moved > 0


def test_moco_frozen_blocks_are_shared_and_only_stage_blocks_are_copied():
  model, _ = _model(_moco(), 3)
  assert model.task_state.block_ids == [3, 4, 5] and len(model.task_state.key_blocks) == 3
  model_f, _ = _model(_moco(), 2, mode="psl_f")
  assert model_f.task_state.block_ids == [1, 2, 3, 4]
  # No state is set on the model itself; the task keeps none between steps either.
  assert not any(name.startswith("moco_") for name in vars(model))
  assert not any(isinstance(v, threading.local) for v in vars(_moco()).values())


def test_moco_step_enqueues_its_keys_fifo():
  task = _moco(queue_size=20)
  model, _ = _model(task, 1)
  x, y = _batch(task, 1)
  queue0 = model.task_state.queue.numpy().copy()
  _step(model, x, y)
  queue1 = model.task_state.queue.numpy()
  assert model.task_state.queue.shape == (20, 8)
  assert int(model.task_state.queue_ptr.numpy()) == BATCH
  assert not np.allclose(queue1[:BATCH], queue0[:BATCH])
  np.testing.assert_array_equal(queue1[BATCH:], queue0[BATCH:])
  np.testing.assert_allclose(np.linalg.norm(queue1[:BATCH], axis=1), 1.0, rtol=1e-5)


def test_enqueue_is_a_ring_buffer():
  queue = tf.Variable(np.zeros((5, 2), np.float32))
  ptr = tf.Variable(tf.constant(0, tf.int64))
  for step in range(3):  # 3 batches of 2 into 5 rows: the 6th key overwrites row 0
    keys = np.full((2, 2), step * 2, np.float32) + np.arange(2, dtype=np.float32)[:, None]
    mocov2.enqueue(queue, ptr, tf.constant(keys))
  np.testing.assert_array_equal(queue.numpy()[:, 0], [5, 1, 2, 3, 4])
  assert int(ptr.numpy()) == 1


def test_enqueue_under_mirrored_strategy_gathers_every_replica(two_replica_strategy):
  strategy = two_replica_strategy
  with strategy.scope():
    queue = tf.Variable(np.zeros((6, 1), np.float32), trainable=False)
    ptr = tf.Variable(tf.constant(1, tf.int64), trainable=False)
  keys = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.fill([2, 1], 10.0 * (ctx.replica_id_in_sync_group + 1)))

  @tf.function
  def step(keys):
    def fn(k):
      gathered, _ = mocov2.losses.replica_gather(k)
      mocov2.enqueue(queue, ptr, gathered)
    strategy.run(fn, args=(keys,))

  step(keys)
  for local in strategy.experimental_local_results(queue):
    np.testing.assert_array_equal(local.numpy()[:, 0], [0, 10, 10, 20, 20, 0])
  for local in strategy.experimental_local_results(ptr):
    assert int(local.numpy()) == 5


def test_moco_step_under_mirrored_strategy(two_replica_strategy):
  """A real fit step on two replicas: EMA exact, 8 keys (4 per replica) enqueued, and every
  replica's copy of queue, pointer and key encoder identical."""
  strategy = two_replica_strategy
  task = _moco()
  x, y = _batch(task, 2)
  with strategy.scope():
    model, _ = _model(task, 2)
  pairs = mocov2.ema_pairs(model)
  key_before = _numpy([k for k, _ in pairs])
  queue0 = model.task_state.queue.numpy().copy()
  _step(model, x, y)
  for (k, q), old in zip(pairs, key_before):
    np.testing.assert_allclose(k.numpy(), 0.9 * old + 0.1 * q.numpy(), rtol=1e-5, atol=1e-6)
  ptrs = [int(v.numpy()) for v in strategy.experimental_local_results(model.task_state.queue_ptr)]
  assert ptrs == [BATCH, BATCH]
  queues = [v.numpy() for v in strategy.experimental_local_results(model.task_state.queue)]
  np.testing.assert_array_equal(queues[0], queues[1])
  assert not np.allclose(queues[0][:BATCH], queue0[:BATCH])
  np.testing.assert_array_equal(queues[0][BATCH:], queue0[BATCH:])
  for k, _ in pairs[:3]:
    local = [v.numpy() for v in strategy.experimental_local_results(k.value)]
    np.testing.assert_array_equal(local[0], local[1])


def test_moco_checkpoint_round_trip_restores_queue_and_key_encoder(tmp_path):
  task = _moco()
  model, _ = _model(task, 2, seed=0)
  x, y = _batch(task, 2)
  for _ in range(2):
    _step(model, x, y)
  keys = mocov2.ema_pairs(model)
  saved_keys = _numpy([k for k, _ in keys])
  saved_key_all = _numpy(model.task_state.key_block(3).weights + model.task_state.key_head.weights)
  saved_queue = model.task_state.queue.numpy().copy()
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))

  fresh, _ = _model(_moco(), 2, seed=1)
  assert not np.allclose(fresh.task_state.queue.numpy(), saved_queue)
  tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
  np.testing.assert_array_equal(fresh.task_state.queue.numpy(), saved_queue)
  assert int(fresh.task_state.queue_ptr.numpy()) == 2 * BATCH
  for a, b in zip(_numpy([k for k, _ in mocov2.ema_pairs(fresh)]), saved_keys):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_numpy(fresh.task_state.key_block(3).weights + fresh.task_state.key_head.weights),
                  saved_key_all):
    np.testing.assert_array_equal(a, b)


def test_moco_queue_smaller_than_batch_is_a_usage_error():
  from psl_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.Config(task="mocov2", batch_size=64,
                             task_options={"queue_size": 32})
  with pytest.raises(ValueError, match="queue_size=32 is smaller than the batch"):
    build_task("mocov2", config)


# ---- smoke runs of the CLI in psl mode ---------------------------------------------------

SMOKE_RUNS = {
    "simclr": ["--optimizer=lars", "--lr_schedule=cosine", "--learning_rate=0.3"],
    "mocov2": ["--mocov2_queue_size=48", "--optimizer=sgd", "--lr_schedule=cosine",
               "--learning_rate=0.03"],
}


def _smoke_run(task, workdir):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
      [sys.executable, "-m", "psl_tf.train", f"--task={task}", "--mode=psl",
       f"--flagfile={SMOKE}", "--image_size=16", "--batch_size=8", "--steps_per_epoch=1",
       f"--workdir={workdir}", *SMOKE_RUNS[task]],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# SimCLR runs by default; the MoCo v2 run (same pipeline, its state is covered by the unit
# tests above) is marked slow to keep the default suite short on 2 cores.
@pytest.mark.slow  # integration tier: a subprocess run of the CLI per task
@pytest.mark.parametrize("task", ["simclr", "mocov2"])
def test_psl_smoke_run_leaves_the_work_directory(tmp_path, task):
  workdir = str(tmp_path / task)
  result = _smoke_run(task, workdir)
  stdout = result.stdout
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, "flags.txt"))
  for k in (1, 2, 3):
    # Keras' own format: a backbone built the same way loads it directly.
    wd.load_run(workdir, k).build_backbone().load_weights(
        os.path.join(workdir, f"stage_{k}", "backbone.weights.h5"))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert [s["level"] for s in summary["stages"]] == [1, 2, 3]
  assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])
  assert summary["stages"][2]["augmentations"][-1] == "sobel"
  assert os.path.isfile(os.path.join(workdir, "export", "saved_model.pb"))
  assert f"{task} level 3: T3 = " in stdout
