"""Each private Keras attribute psl_tf relies on (psl_tf/keras_private.py) still exists and
does what the package needs: when a Keras release changes one, this file fails, naming it."""

import inspect
import os
import platform

import keras
import numpy as np
import tensorflow as tf

from psl_tf import keras_private
from psl_tf import optim
from psl_tf.models import revnet


def test_flatten_layers_finds_layers_held_by_custom_layers():
  assert hasattr(keras.layers.Layer, "_flatten_layers")
  backbone = revnet.revnet50(filters_factor=1)
  bns = [l for l in keras_private.flatten_layers(backbone)
         if isinstance(l, keras.layers.BatchNormalization)]
  # 16 reversible units x 3 BatchNorms in their residual functions, plus b5's final one;
  # none of them is in `Model.layers` of a block, which holds the custom stage layers.
  assert len(bns) == 16 * 3 + 1
  assert len({id(l) for l in bns}) == len(bns)
  assert backbone not in list(keras_private.flatten_layers(backbone))


def test_multi_worker_predicate_is_the_one_keras_uses():
  from keras.src.backend.tensorflow import trainer as tf_trainer  # pylint: disable=g-import-not-at-top
  # Keras reduces step outputs over replicas with axis=0 exactly when this private method
  # says so; psl_tf.trainer reshapes its logs under the same condition.
  assert "_in_multi_worker_mode" in inspect.getsource(
      tf_trainer._collective_all_reduce_multi_worker)  # pylint: disable=protected-access
  from tensorflow.python.distribute import collective_all_reduce_strategy  # pylint: disable=g-import-not-at-top
  assert callable(getattr(collective_all_reduce_strategy.CollectiveAllReduceExtended,
                          "_in_multi_worker_mode"))
  assert not keras_private.in_multi_worker_mode(tf.distribute.get_strategy())
  assert not keras_private.in_multi_worker_mode(tf.distribute.OneDeviceStrategy("/cpu:0"))


def test_variable_index_matches_keras_own_optimizers():
  variables = [keras.Variable(np.ones((2, 3), "float32")), keras.Variable(np.ones(3, "float32"))]
  sgd = keras.optimizers.SGD(momentum=0.9)
  sgd.build(variables)
  assert "_get_variable_index" in inspect.getsource(type(sgd).update_step)
  assert [keras_private.variable_index(sgd, v) for v in variables] == [0, 1]
  lars = optim.LARS(learning_rate=0.1)
  lars.build(variables)
  assert [keras_private.variable_index(lars, v) for v in variables] == [0, 1]


def test_fit_calls_the_symbolic_build_hook_with_the_iterator():
  calls = []

  class Spy(keras_private.FirstReplicaSymbolicBuild, keras.Sequential):
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
      calls.append((iterator is not None, data_batch is not None))
      return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

  signature = inspect.signature(keras.Model._maybe_symbolic_build)
  assert list(signature.parameters) == ["self", "iterator", "data_batch"]
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = Spy([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
  model.fit(np.ones((8, 3), "float32"), np.zeros((8, 2), "float32"), batch_size=4, epochs=1,
            verbose=0)
  assert calls and calls[0][0], "Keras' fit no longer calls _maybe_symbolic_build(iterator=...)"


def test_onednn_enabled_is_tensorflows_own_answer():
  # `import psl_tf` set the variable before TensorFlow read it; off unless it was set to 1.
  expected = os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1" and platform.machine() in (
      "x86_64", "AMD64")
  assert keras_private.onednn_enabled() is expected
