"""The paper's step schedule, and which worker of a multi-worker cluster writes files."""

import os

import pytest
import tensorflow as tf

from psl_tf import distribute
from psl_tf import optim


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
  boundaries = [s for s in range(5 * 390) if float(schedule(s)) < float(schedule(max(s - 1, 0)))]
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
