"""Test set-up shared by every test file.

The CPU is split into two logical devices before TensorFlow initialises, so tests can run a
real `tf.distribute.MirroredStrategy` with two replicas on a machine without GPUs.
"""

import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # pylint: disable=g-import-not-at-top

from psl_tf.cli import quiet  # pylint: disable=g-import-not-at-top

# TensorFlow's C++ start-up lines would otherwise land after pytest's closing summary.
tf = quiet.import_tensorflow_quietly()

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


def pytest_collection_finish(session):
  """Garbage collection tuned for a session that traces thousands of TensorFlow graphs.

  Python's default thresholds ran a full collection every ~70,000 surviving allocations; in
  a process holding TensorFlow, Keras and every traced graph, those full passes took 6 % of
  the test CPU. What is alive once the tests are collected (the imported modules) is frozen
  out of every later pass, and the passes run less often. Garbage is still collected: only
  when, not whether, changes.
  """
  del session
  gc.collect()
  gc.freeze()
  gc.set_threshold(20_000, 20, 20)


_collective_key_bases = iter(range(10_000, 10**9, 10_000))


@pytest.fixture
def two_replica_strategy():
  """A fresh `MirroredStrategy(["/cpu:0", "/cpu:1"])` whose collective keys are its own.

  Every MirroredStrategy numbers its collective groups from the same start, and the runtime
  remembers a (group, instance) key's op across strategies, so a second strategy in the same
  process whose collectives come in another order (an all_gather where the first had an
  all_reduce) fails with "Collective instance N expected type ...". Each strategy from this
  fixture starts at its own key base.
  """
  class _Mirrored(tf.distribute.MirroredStrategy):
    _collective_key_base = next(_collective_key_bases)
  return _Mirrored(["/cpu:0", "/cpu:1"])


@pytest.fixture
def train_flags():
  """A fresh absl FlagValues holding every `python -m psl_tf.train` flag, unparsed: the CLI's
  `main(argv, flag_values)` runs in-process on it without touching absl's global FLAGS."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import flagdefs  # pylint: disable=g-import-not-at-top
  return flagdefs.define_train_flags(flags.FlagValues())


@pytest.fixture
def parsed_flags(train_flags):
  """`parsed_flags(args)`: `train_flags` parsed from flags/smoke.flags plus `args`."""
  smoke = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags",
                       "smoke.flags")

  def parse(args):
    train_flags(["psl_tf.train", f"--flagfile={smoke}", *args])
    return train_flags
  return parse


class RunInterrupted(Exception):
  """What `stop_after_epoch`'s callback raises where a kill would land."""


@pytest.fixture
def stop_after_epoch():
  """`stop_after_epoch(stage_name, epoch)`: a Keras callback that raises RunInterrupted
  (`stop_after_epoch.error`) at the end of that epoch of that stage, as a kill would."""
  import keras  # pylint: disable=g-import-not-at-top

  class StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, stage_name, epoch):
      super().__init__()
      self.stage_name, self.epoch = stage_name, epoch

    def on_epoch_end(self, epoch, logs=None):
      if self.model.name == self.stage_name and epoch + 1 == self.epoch:
        raise RunInterrupted(f"{self.stage_name} after epoch {self.epoch}")

  StopAfterEpoch.error = RunInterrupted
  return StopAfterEpoch


@pytest.fixture
def stage_on_random_images():
  """`make(task, stage, width, side, n, seed)`: a compiled StageModel (SGD 0.1) of `stage` on
  a fresh cifar_resnet depth 10 of `width`, with its head, and one training batch (x, y) of the
  task's examples of `n` random `side` x `side` images. Returns (model, backbone, head, x, y)."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from psl_tf import optim  # pylint: disable=g-import-not-at-top
  from psl_tf import trainer  # pylint: disable=g-import-not-at-top
  from psl_tf.models import build_backbone  # pylint: disable=g-import-not-at-top

  def make(task, stage, width, side, n, seed):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("cifar_resnet", depth=10, width=width)
    head = task.build_head(backbone.get_layer(f"b{stage.last}").output.shape[1:], stage.level)
    model = trainer.StageModel(backbone, task, stage, head)
    model.compile(optimizer=optim.build_optimizer("sgd", 0.1))
    fn = task.example_fn(stage.level, training=True)
    rng = np.random.default_rng(seed)
    pairs = [fn(tf.constant(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)),
                tf.constant(0, tf.int64), tf.constant([11, i], tf.int64)) for i in range(n)]
    return (model, backbone, head, tf.stack([p[0] for p in pairs]),
            tf.stack([p[1] for p in pairs]))

  return make
