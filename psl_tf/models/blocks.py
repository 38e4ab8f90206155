"""Assembling a backbone from five block functions, and reading blocks back out of one."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import keras
from keras import layers

from psl_tf import keras_private

BLOCK_NAMES = ("b1", "b2", "b3", "b4", "b5")

# A block: a function from the previous block's output tensor (a Keras tensor) to its own.
BlockFn = Callable[[Any], Any]
# An input shape without the batch axis; spatial sizes may be None.
Shape = tuple[int | None, ...]

# ImageNet statistics of RGB values in [0, 1]; a fixed input normalisation inside b1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def standardize(name: str = "standardize") -> layers.Normalization:
  """(x - mean) / std with the fixed ImageNet constants: Keras' own `Normalization` with its
  mean and variance given (not adapted), so it has no weights and a saved backbone needs no
  psl_tf to load."""
  return layers.Normalization(axis=-1, mean=list(IMAGENET_MEAN),
                              variance=[s * s for s in IMAGENET_STD], name=name)


# The input normalisation of backbones saved before `standardize` (a custom layer): kept
# registered so that their .keras files still load (after `import psl_tf.models`). It has no
# weights, so their stage weights load into today's backbones as they are.
@keras.saving.register_keras_serializable(package="psl_tf")
class Standardize(layers.Layer):
  """(x - mean) / std with fixed constants; no weights. Superseded by `standardize()`."""

  def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def call(self, x: Any) -> Any:
    mean = keras.ops.convert_to_tensor(self.mean, dtype=x.dtype)
    std = keras.ops.convert_to_tensor(self.std, dtype=x.dtype)
    return (x - mean) / std

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "mean": self.mean, "std": self.std}


def assemble(block_fns: Sequence[BlockFn], input_shape: Shape = (None, None, 3),
             name: str = "backbone") -> keras.Model:
  """Builds the backbone contract from five functions `tensor -> tensor`.

  Each function is traced on a fresh `keras.Input` of the previous block's output shape,
  so every block is a stand-alone functional `keras.Model` named b1..b5 that a stage can
  call on its own; the returned model chains them and outputs a dict of all five maps.
  """
  if len(block_fns) != len(BLOCK_NAMES):
    raise ValueError(f"a backbone has {len(BLOCK_NAMES)} blocks, got {len(block_fns)}")
  sub_models = []
  shape = tuple(input_shape)
  for i, (block_name, fn) in enumerate(zip(BLOCK_NAMES, block_fns)):
    inp = keras.Input(shape, name=f"{block_name}_input")
    x = standardize()(inp) if i == 0 else inp
    out = fn(x)
    sub_models.append(keras.Model(inp, out, name=block_name))
    shape = tuple(out.shape[1:])
  image = keras.Input(tuple(input_shape), name="image")
  x, outputs = image, {}
  for block_name, sub_model in zip(BLOCK_NAMES, sub_models):
    x = sub_model(x)
    outputs[block_name] = x
  return keras.Model(image, outputs, name=name)


def get_blocks(backbone: keras.Model) -> list[keras.Model]:
  """The five block sub-models of a backbone, in order."""
  return [backbone.get_layer(name) for name in BLOCK_NAMES]


def run_blocks(block_models: Sequence[keras.Model], x: Any, first: int, last: int,
               training: bool) -> Any:
  """Runs blocks first..last (1-based, inclusive) on x."""
  for block in block_models[first - 1:last]:
    x = block(x, training=training)
  return x


def set_synchronized_batchnorm(model: keras.Model, synchronized: bool = True) -> None:
  """Makes every BatchNormalization layer in `model` (sub-models included) compute its batch
  statistics over all replicas (cross-replica "sync BN") or per replica.

  With sync BN a step on N replicas computes the same statistics, hence the same loss and
  update, as one device on the same global batch.
  """
  for layer in keras_private.flatten_layers(model):
    if isinstance(layer, layers.BatchNormalization):
      layer.synchronized = synchronized


def recalibrate_batch_norm(model: keras.Model, batches: Iterable[Any]) -> int:
  """Re-estimates the moving mean and variance of every BatchNormalization layer of `model`
  (sub-models included) as the plain average of its batch statistics over `batches` (an
  iterable of input batches), each layer seeing the batch normalised by the layers below it
  with their batch statistics, as in training (AdaBN; SWA's BN update).

  For features used on other images than the ones a backbone was trained on: a jigsaw
  backbone's statistics come from 9 px tiles, its probes see whole images. The layers'
  momentum and `trainable` flags are restored afterwards. Returns the number of batches used.
  """
  norms = [layer for layer in keras_private.flatten_layers(model)
           if isinstance(layer, layers.BatchNormalization)]
  saved = [(layer.momentum, layer.trainable) for layer in norms]
  count = 0
  try:
    for layer in norms:
      layer.trainable = True  # a frozen layer would normalise with its moving statistics
    for batch in batches:
      for layer in norms:
        # moving <- moving * k/(k+1) + batch / (k+1): the mean over the first k+1 batches.
        layer.momentum = count / (count + 1)
      model(batch, training=True)
      count += 1
  finally:
    for layer, (momentum, trainable) in zip(norms, saved):
      layer.momentum, layer.trainable = momentum, trainable
  if not count:
    raise ValueError("recalibrate_batch_norm: no batches")
  return count


def moving_statistics(model: keras.Model) -> list[keras.Variable]:
  """The BatchNorm moving means and variances a training step of `model` can change: those of
  its trainable normalisation layers (sub-models included), each once."""
  found, seen = [], set()
  for layer in keras_private.flatten_layers(model):
    if not layer.trainable:
      continue
    for name in ("moving_mean", "moving_variance"):
      variable = getattr(layer, name, None)
      if isinstance(variable, keras.Variable) and id(variable) not in seen:
        seen.add(id(variable))
        found.append(variable)
  return found
