"""Every private Keras / TensorFlow attribute the package relies on, one function each.

Nothing else in `psl_tf` touches a leading-underscore attribute of Keras or TensorFlow: when a
Keras release renames or drops one, `tests/keras_private_test.py` fails here, naming it,
instead of a training run failing somewhere deep inside `fit`.

* `flatten_layers`: `Layer._flatten_layers`. Keras 3 has no public way to list the layers
  nested inside custom layers (RevNet's units hold their BatchNorms as attributes, which
  `Model.layers` does not show); every BatchNorm must be found for sync BN, BN recalibration
  and the moving statistics averaged over replicas.
* `in_multi_worker_mode`: `strategy.extended._in_multi_worker_mode()`, the very predicate
  Keras' TensorFlow trainer uses to decide how it reduces step outputs over replicas; ours
  must agree with it (`psl_tf.trainer`).
* `variable_index`: `Optimizer._get_variable_index`, how Keras' own optimizers (SGD, Adam)
  find a variable's slot; LARS (`psl_tf.optim`) does the same.
* `FirstReplicaSymbolicBuild`: overrides the trainer hook `_maybe_symbolic_build`, to work
  around a Keras 3.15 bug under MultiWorkerMirroredStrategy (see the class).
* `onednn_enabled`: `tensorflow.python.util._pywrap_util_port.IsMklEnabled()`, whether this
  process runs TensorFlow's oneDNN kernels (TensorFlow has no public query;
  `psl_tf.guards.onednn_unsafe_convolutions` refuses shapes they crash on).
"""

from __future__ import annotations

from typing import Any, Iterator

import keras
import tensorflow as tf


def flatten_layers(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
  """Every layer nested in `model` (sub-models and layers held by custom layers), each once,
  `model` itself excluded."""
  return model._flatten_layers(include_self=False, recursive=True)  # pylint: disable=protected-access


def in_multi_worker_mode(strategy: tf.distribute.Strategy) -> bool:
  """True when `strategy` is a MultiWorkerMirroredStrategy spanning more than one worker:
  the condition under which Keras' TensorFlow trainer reduces step outputs with
  `strategy.reduce(..., axis=0)`."""
  return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
          and bool(strategy.extended._in_multi_worker_mode()))  # pylint: disable=protected-access


def onednn_enabled() -> bool:
  """True when this process runs TensorFlow's oneDNN CPU kernels (fixed at TensorFlow's import
  by TF_ENABLE_ONEDNN_OPTS, or by TensorFlow's own default for the CPU when it is unset)."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return bool(_pywrap_util_port.IsMklEnabled())


def variable_index(optimizer: keras.optimizers.Optimizer, variable: Any) -> int:
  """The index of `variable` in the lists `optimizer.add_optimizer_variables` returned."""
  return optimizer._get_variable_index(variable)  # pylint: disable=protected-access


class FirstReplicaSymbolicBuild:
  """A `keras.Model` mixin: builds the model symbolically from the first local replica's batch.

  Keras 3 (3.15) learns the input shapes from the first distributed batch by MEAN-reducing it
  across replicas, eagerly; under MultiWorkerMirroredStrategy that reduce fails ("Attempt to
  convert a value (PerReplica:...) ... to a Tensor"), so multi-worker `fit` never started.
  The first local replica's batch has the same shapes, without a collective.
  """

  def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> Any:
    # Keras' private hook
    strategy = getattr(self, "_distribute_strategy", None)
    if iterator is not None and data_batch is None and strategy is not None:
      for _, _, it in iterator:
        data_batch = tf.nest.map_structure(
            lambda x: strategy.experimental_local_results(x)[0]
            if isinstance(x, tf.distribute.DistributedValues) else x, next(it))
        break
      iterator = None
    return super()._maybe_symbolic_build(  # type: ignore[misc]
        iterator=iterator, data_batch=data_batch)
