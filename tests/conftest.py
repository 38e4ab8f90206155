"""Test set-up shared by every test file.

The CPU is split into two logical devices before TensorFlow initialises, so tests can run a
real `tf.distribute.MirroredStrategy` with two replicas on a machine without GPUs.
"""

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
