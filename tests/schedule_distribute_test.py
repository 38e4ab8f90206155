"""The paper's step schedule, restarted or continued over stages, and which worker of a multi-worker cluster writes files."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import distribute
from psl_tf import optim
from psl_tf import pretraining as pretrain


def test_paper_step_schedule_drops_after_20_40_and_50_of_60_epochs():
  steps_per_epoch = 10
  schedule = optim.make_schedule("step", 0.01, 60 * steps_per_epoch, "20,20,10,10", 0.1)
  lr = lambda epoch: float(schedule(epoch * steps_per_epoch))  # pylint: disable=unnecessary-lambda-assignment
  # Keras' PiecewiseConstantDecay switches after the boundary step, so the first step of
  # epoch 20 still has the old rate and the second has the new one.
  assert lr(0) == pytest.approx(0.01) and lr(20) == pytest.approx(0.01)
  assert lr(20.1) == pytest.approx(1e-3) and lr(40) == pytest.approx(1e-3)
  assert lr(40.1) == pytest.approx(1e-4) and lr(50) == pytest.approx(1e-4)
  assert lr(50.1) == pytest.approx(1e-5) and lr(59.9) == pytest.approx(1e-5)


def test_step_schedule_scales_to_any_stage_length():
  # 5 epochs of 390 steps: the same fractions 1/3, 2/3, 5/6 of the stage.
  schedule = optim.make_schedule("step", 0.1, 5 * 390, "20,20,10,10", 0.1)

  @tf.function  # the rate of every step, one scalar step at a time as the optimizer asks
  def rates():  # (traced once: 3900 eager calls took 6 s of CPU)
    return tf.map_fn(lambda step: tf.cast(schedule(step), tf.float32), tf.range(5 * 390),
                     fn_output_signature=tf.float32)
  rate = rates().numpy()
  boundaries = [s for s in range(1, 5 * 390) if rate[s] < rate[s - 1]]
  assert boundaries == [651, 1301, 1626]
  assert optim.make_schedule("step", 0.1, 100, "1", 0.1) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule("linear", 0.1, 100)


class _Resolver(tf.distribute.cluster_resolver.SimpleClusterResolver):
  pass


class _Strategy:
  """Only what `is_chief` and `writable_dir` look at: the cluster resolver."""

  def __init__(self, cluster, task_type, task_id):
    self.cluster_resolver = _Resolver(tf.train.ClusterSpec(cluster), task_type=task_type,
                                      task_id=task_id)


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    ({"worker": ["a:1", "b:1"]}, "worker", 0, True),  # no chief job: worker 0 writes
    ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),  # the chief job writes
])
def test_only_the_chief_writes_in_a_cluster(cluster, task_type, task_id, chief, tmp_path):
  strategy = _Strategy(cluster, task_type, task_id)
  assert distribute.is_chief(strategy) is chief
  path = str(tmp_path / "run" / "ckpt")
  if chief:
    assert distribute.writable_dir(path, strategy) == path
  else:
    # Other workers save their collective checkpoint copy to a private folder that is not kept.
    private = distribute.writable_dir(path, strategy)
    assert private != path and not private.startswith(str(tmp_path))
    assert os.path.basename(private) == "ckpt" and str(os.getpid()) in private


def test_outside_a_cluster_every_strategy_is_chief(tmp_path):
  for strategy in (tf.distribute.get_strategy(), distribute.make_strategy("one_device")):
    assert distribute.is_chief(strategy)
    assert distribute.writable_dir(str(tmp_path), strategy) == str(tmp_path)
  with pytest.raises(ValueError, match="unknown strategy"):
    distribute.make_strategy("horovod")


def test_a_shifted_schedule_reads_the_run_schedule_later():
  run_long = optim.make_schedule("cosine", 0.3, 100, warmup_steps=10)
  shifted = optim.make_schedule("cosine", 0.3, 100, warmup_steps=10, start_step=40)
  for step in (0, 1, 30, 59):
    assert float(shifted(step)) == pytest.approx(float(run_long(step + 40)))
  config = keras.optimizers.schedules.serialize(shifted)
  again = keras.optimizers.schedules.deserialize(config, custom_objects={
      "ShiftedSchedule": optim.ShiftedSchedule})
  assert float(again(5)) == pytest.approx(float(shifted(5)))
  # Constant rates (a constant schedule, a step schedule of one piece) need no shift.
  assert optim.make_schedule("constant", 0.1, 100, start_step=40) == pytest.approx(0.1)
  assert optim.make_schedule("step", 0.1, 100, "1", start_step=40) == pytest.approx(0.1)
  step = optim.make_schedule("step", 0.1, 100, "1,1", start_step=40)
  assert [float(step(i)) for i in (0, 10, 11)] == pytest.approx([0.1, 0.1, 0.01])  # drop after step 50


@pytest.mark.parametrize("restart", [True, False])
def test_stages_restart_or_continue_the_schedule(tmp_path, restart):
  """Every stage's optimizer starts the schedule again (the default), or continues one
  schedule over the run's steps (--lr_restart=false); checked on the rate each step used."""
  epochs, steps, base_lr = (2, 1, 1), 2, 0.05
  config = config_lib.Config(
      task="rotation", dataset="demo", backbone="cifar_resnet", depth=10, width=8,
      image_size=16, head_hidden=16, batch_size=8, epochs=epochs, steps_per_epoch=steps,
      optimizer="sgd", learning_rate=base_lr, lr_schedule="cosine", warmup_epochs=1,
      lr_restart=restart, heldout_split="none", workdir=str(tmp_path), export=False,
      verbose=0)
  used = {}

  class RecordRate(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
      used.setdefault(self.model.name, []).append(float(self.model.optimizer.learning_rate))

  summary = pretrain.run(config, distribute.make_strategy("one_device"), log=lambda m: None,
                         callbacks=[RecordRate()])
  if restart:
    expected = [[float(optim.make_schedule("cosine", base_lr, e * steps, warmup_steps=steps)(i))
                 for i in range(e * steps)] for e in epochs]
  else:
    run_long = optim.make_schedule("cosine", base_lr, sum(epochs) * steps, warmup_steps=steps)
    rates = [float(run_long(i)) for i in range(sum(epochs) * steps)]
    expected = [rates[:4], rates[4:6], rates[6:]]
  for k, stage in enumerate(summary["stages"], start=1):
    np.testing.assert_allclose(used[f"stage_{k}"], expected[k - 1], rtol=1e-5)
    np.testing.assert_allclose(stage["learning_rate_first_last"],
                               [expected[k - 1][0], expected[k - 1][-1]], rtol=1e-5)
  # Restarted, every stage warms up from 0 again; continued, only stage 1 does.
  assert (used["stage_2"][0] == pytest.approx(0.0)) == restart
