"""RevNet-50 (Kolesnikov et al. 2019, after Gomez et al. 2017) cut into the blocks b1..b5.

The architecture follows "Revisiting self-supervised visual representation learning"
(Kolesnikov, Zhai and Beyer, CVPR 2019), the network the PSL paper uses for rotation:

* b1: a 7x7 stride-2 root convolution to ``64 * filters_factor`` channels. The network is
  pre-activation, so the root has no BatchNorm/ReLU of its own (the first unit's residual
  function starts with one).
* b2: a 3x3 stride-2 max-pool, then 3 reversible units.
* b3, b4, b5: a transition, then 4, 6 and 3 reversible units; b5 ends with BatchNorm + ReLU
  (their rotation runs set ``last_relu``).

A **reversible unit** splits its input channels into halves ``x = [x1, x2]`` and returns
``[x2, x1 + F(x2)]``: the additive coupling ``y1 = x1 + F(x2)`` followed by a swap of the
halves (the one-function form of Kolesnikov et al.; the swap lets the next unit update the
other half). ``F`` is a pre-activation bottleneck without shortcut on ``C/2`` channels:
BN-ReLU-1x1 conv to ``C/8``, BN-ReLU-3x3 conv, BN-ReLU-1x1 conv back to ``C/2``. The inverse
is exact up to float rounding: ``x2 = y[:C/2]``, ``x1 = y[C/2:] - F(x2)``.

The **transition** between resolutions is not reversible and has no weights: a 2x2 stride-2
average pool and zero-padding of the channels from C to 2C (C/2 zeros on each side, so each
half of the next unit's input carries half of the old channels). This is Kolesnikov et al.'s
``pool_and_double_channels``; it keeps the b1..b5 resolutions of ResNet-50 (at 224 px the
blocks output 112, 56, 28, 14 and 7 px maps; at the default ``filters_factor=4`` with
256, 256, 512, 1024 and 2048 channels).

**Parameter count.** At ``filters_factor=4`` the backbone has 5,435,392 parameters
(5,381,888 of them convolution kernels), against 23,561,152 for this package's ResNet-50
with the same block widths. The reason is structural, not a bug: each residual function
sees only half the channels and its bottleneck is ``C/8`` wide, so a unit has ``17 C^2 / 64``
kernel weights against ``17 C^2 / 16`` for a ResNet bottleneck of the same output width,
a quarter. The "24M" that the PSL paper's Table 4 lists for "Rv50" is ResNet-50's count;
the same table's 86M for "Rv50w4x" (``filters_factor=16``, 16 times the kernel weights)
matches this implementation: 16 x 5.38M = 86M.

**Recomputation** (``recompute=True``). In training mode each stage of reversible units runs
under one `tf.custom_gradient` that keeps only the stage's output. The backward pass walks
the units from the last to the first, rebuilds each unit's input from its output with the
inverse above, recomputes ``F`` once under a local tape and backpropagates through it, so
activation memory no longer grows with the number of units (Gomez et al.'s algorithm). The
halves stay separate tensors inside a stage, and each unit's recomputation waits for the
gradient to reach it (`_after`). BatchNorm inside ``F`` normalises with batch statistics both
times; only the forward pass updates the moving averages (the recomputation passes
``update_stats=False`` and uses the fused kernel, whose gradient keeps no input-sized
temporaries), so they move once per step as without recomputation. The stem's max-pool
(`MaxPool`) keeps the argmax of each window instead of its 112x112 input (at 224 px), the
largest activation of the network. What the step then keeps per image is the stem's
argmax, each stage's output, the standardised image (for the root kernel's gradient) and
the small final BatchNorm; its peak is the b1 output (forward) or its gradient (backward),
which cross the b1/b2 block boundary in either mode.
Inference mode and frozen blocks take the ordinary path.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import layers
from keras import ops
import tensorflow as tf

from psl_tf.models import blocks

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
UNITS = (3, 4, 6, 3)


def _conv(filters: int, kernel: int, strides: int = 1,
          name: str | None = None) -> layers.Conv2D:
  # A fresh initializer per layer (as in resnet.py): a shared unseeded Keras 3 initializer
  # would give same-shaped convolutions identical weights and ignore set_random_seed.
  init = keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="truncated_normal")
  return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                       kernel_initializer=init, name=name)


@keras.saving.register_keras_serializable(package="psl_tf")
class BatchNorm(layers.BatchNormalization):
  """BatchNormalization that can use batch statistics without updating its moving averages.

  `call(..., update_stats=False)` in training mode normalises exactly as training mode does
  but leaves ``moving_mean`` / ``moving_variance`` alone. The reversible backward pass needs
  this: it reruns the residual functions in training mode, and a second update per step
  would square the effective momentum.

  That path uses TensorFlow's fused kernel where it exists (float32, float16, bfloat16 on
  4-D channels-last inputs, not synchronised): its gradient needs only the input and the
  incoming gradient, where the composite ops Keras uses (moments, then scale and shift) keep
  several input-sized temporaries; the recomputation's backward pass is where memory peaks.
  Other cases (float64, sync BN) compute the same thing from Keras ops.
  """

  def call(self, inputs: Any, training: bool | None = None, mask: Any = None,
           update_stats: bool = True) -> Any:
    if not (training and self.trainable) or update_stats or mask is not None:
      return super().call(inputs, training=training, mask=mask)
    if (not self.synchronized and len(inputs.shape) == 4 and self.axis % 4 == 3
        and inputs.dtype in (tf.float32, tf.float16, tf.bfloat16)):
      channels = inputs.shape[-1]
      # Normalises with the biased batch variance, as Keras does; statistics in float32.
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          inputs,
          tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels]),
          tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels]),
          epsilon=self.epsilon, is_training=True)
      return ops.cast(outputs, self.compute_dtype)
    # Statistics in at least float32, as the parent class computes them.
    x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
    axes = [i for i in range(len(x.shape)) if i != (self.axis % len(x.shape))]
    mean, variance = ops.moments(x, axes=axes, synchronized=self.synchronized)
    outputs = ops.batch_normalization(
        x, mean, variance, axis=self.axis,
        offset=ops.cast(self.beta, x.dtype) if self.center else None,
        scale=ops.cast(self.gamma, x.dtype) if self.scale else None,
        epsilon=self.epsilon)
    return ops.cast(outputs, self.compute_dtype)


def _bn(name: str) -> BatchNorm:
  return BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


@keras.saving.register_keras_serializable(package="psl_tf")
class PreactBottleneck(layers.Layer):
  """The residual function F: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, no shortcut.

  Maps ``channels`` to ``channels`` through a ``channels // 4`` wide bottleneck.
  """

  def __init__(self, channels: int, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.channels = int(channels)
    inner = self.channels // 4
    self.bn1, self.conv1 = _bn("bn1"), _conv(inner, 1, name="conv1")
    self.bn2, self.conv2 = _bn("bn2"), _conv(inner, 3, name="conv2")
    self.bn3, self.conv3 = _bn("bn3"), _conv(self.channels, 1, name="conv3")

  def call(self, x: Any, training: bool = False, update_stats: bool = True) -> Any:
    for bn, conv in ((self.bn1, self.conv1), (self.bn2, self.conv2), (self.bn3, self.conv3)):
      x = conv(ops.relu(bn(x, training=training, update_stats=update_stats)))
    return x

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="psl_tf")
class ReversibleUnit(layers.Layer):
  """``[x1, x2] -> [x2, x1 + F(x2)]`` on ``channels`` channels, with its exact inverse."""

  def __init__(self, channels: int, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    if channels % 8:
      raise ValueError(f"a reversible unit needs a multiple of 8 channels, got {channels}")
    self.channels = int(channels)
    self.residual = PreactBottleneck(self.channels // 2, name="residual")

  def call(self, x: Any, training: bool = False, update_stats: bool = True) -> Any:
    x1, x2 = ops.split(x, 2, axis=-1)
    y1 = x1 + self.residual(x2, training=training, update_stats=update_stats)
    return ops.concatenate([x2, y1], axis=-1)

  def inverse(self, y: Any, training: bool = False) -> Any:
    """The unit's input from its output. In training mode, BatchNorm uses batch statistics
    without updating its moving averages."""
    x2, y1 = ops.split(y, 2, axis=-1)
    x1 = y1 - self.residual(x2, training=training, update_stats=False)
    return ops.concatenate([x1, x2], axis=-1)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "channels": self.channels}


def _after(x: Any, dependency: Any) -> Any:
  """`x`, computable only once `dependency` is.

  In a graph the executor runs an op as soon as its inputs exist. The reconstruction chain
  needs only the stage output and the weights, so without this it would run, for every unit,
  right after the forward pass and hold all the recomputed activations until the gradients
  arrive: the memory saving would be lost. A data dependency (adding zero derived from the
  incoming gradient, NaN-preserving so no optimiser folds it) defers each unit's
  recomputation until the backward pass reaches it. `tf.recompute_grad` does the same.
  """
  if tf.executing_eagerly():
    return x
  first = tf.reshape(dependency, [-1])[:1]
  zero = tf.where(tf.reduce_all(tf.equal(first, first)), 0.0, float("nan"))
  return x + tf.cast(zero, x.dtype)


def _reversible_backward(units: Sequence[ReversibleUnit], y: Any, dy: Any,
                         variables: list[Any]) -> tuple[Any, list[Any]]:
  """Backpropagates `dy` through `units` given only their final output `y`.

  Unit by unit from the top: rebuild the input from the output, rerun F once under a tape,
  and send the gradient on. A unit maps the halves ``(a, b)`` to ``(b, a + F(b))``; with
  output halves ``(y1, y2)`` and their gradients ``(g1, g2)``: ``b = y1``,
  ``a = y2 - F(b)``, ``da = g2``, ``db = g1 + (dF/db)^T g2`` and ``dW = (dF/dW)^T g2``.
  The halves stay separate tensors from the first split to the last concatenation, so no
  unit copies the whole state.
  """
  var_grads: list[Any] = [None] * len(variables)
  y1, y2 = tf.split(y, 2, axis=-1)
  g1, g2 = tf.split(dy, 2, axis=-1)
  for unit in reversed(units):
    b = _after(y1, g2)
    with tf.GradientTape() as tape:
      tape.watch(b)
      fb = unit.residual(b, training=True, update_stats=False)
    grads = tape.gradient(fb, [b] + variables, output_gradients=g2)
    y1, y2 = y2 - fb, b
    g1, g2 = g2, g1 + grads[0]
    for i, g in enumerate(grads[1:]):
      if g is not None:
        var_grads[i] = g if var_grads[i] is None else var_grads[i] + g
  return tf.concat([g1, g2], axis=-1), var_grads


def run_reversible(units: Sequence[ReversibleUnit], x: Any) -> Any:
  """Runs `units` in training mode, storing no activation inside them for the backward pass.

  Gradients reach `x` and every trainable variable the units read (the custom gradient
  receives those variables from TensorFlow's variable watcher).
  """
  @tf.custom_gradient
  def forward(x: Any) -> Any:
    a, b = tf.split(x, 2, axis=-1)
    for unit in units:
      a, b = b, a + unit.residual(b, training=True)
    y = tf.concat([a, b], axis=-1)

    def backward(dy: Any, variables: Sequence[Any] | None = None) -> Any:
      return _reversible_backward(units, y, dy, list(variables or []))

    return y, backward

  return forward(x)


@keras.saving.register_keras_serializable(package="psl_tf")
class MaxPool(layers.MaxPooling2D):
  """3x3 stride-2 max-pool whose gradient needs only the argmax, not the input.

  TensorFlow's max-pool gradient keeps the pool's input for the backward pass; at the
  RevNet's root that is the 112x112 (at 224 px) b1 output, the largest activation of the
  network. In training mode (when trainable) this layer stores the flat index of each
  window's maximum instead (int32 where the batch's indices fit: a quarter of the input's
  size) and adds the incoming gradient at those positions. The forward values are
  `MaxPooling2D`'s, the gradient is MaxPoolGrad's up to the order of float additions.
  """

  def __init__(self, **kwargs: Any) -> None:
    kwargs.setdefault("pool_size", 3)
    kwargs.setdefault("strides", 2)
    kwargs.setdefault("padding", "same")
    super().__init__(**kwargs)

  def call(self, inputs: Any, training: bool | None = None) -> Any:
    if not (training and self.trainable):
      return super().call(inputs)
    return _max_pool_keeping_argmax(inputs, self.pool_size, self.strides, self.padding.upper())


def _max_pool_keeping_argmax(x: Any, pool_size: Sequence[int], strides: Sequence[int],
                             padding: str) -> Any:
  ksize, stride = [1, *pool_size, 1], [1, *strides, 1]
  # Flat indices over the whole batch; int32 (half the memory of int64) whenever they fit.
  size = x.shape.num_elements()
  index_dtype = tf.int32 if size is not None and size < 2**31 else tf.int64

  @tf.custom_gradient
  def pool(x: Any) -> Any:
    y, argmax = tf.nn.max_pool_with_argmax(x, ksize, stride, padding, output_dtype=index_dtype,
                                           include_batch_in_index=True)
    shape = tf.shape(x, out_type=index_dtype)  # Only the shape of x, so x itself can be freed.

    def grad(dy: Any) -> Any:
      # Each window's gradient goes to its maximum; overlapping windows add up. This is what
      # MaxPoolGrad computes, without the input (the gradient op TensorFlow registers for
      # max_pool_with_argmax still takes it, and has no int32 CPU kernel).
      dx = tf.math.unsorted_segment_sum(tf.reshape(dy, [-1]), tf.reshape(argmax, [-1]),
                                        tf.reduce_prod(shape))
      return tf.reshape(dx, shape)

    return y, grad

  return pool(x)


@keras.saving.register_keras_serializable(package="psl_tf")
class ReversibleStage(layers.Layer):
  """A sequence of `ReversibleUnit`s at one resolution; optionally memory-saving in training.

  Args:
    channels: channels of the input and output.
    num_units: how many units.
    recompute: in training mode, recompute activations in the backward pass through the
      units' inverses instead of storing them (see the module docstring).
  """

  def __init__(self, channels: int, num_units: int, recompute: bool = False,
               **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.channels, self.num_units = int(channels), int(num_units)
    self.recompute = bool(recompute)
    self.units = [ReversibleUnit(self.channels, name=f"unit{i + 1}")
                  for i in range(self.num_units)]

  def call(self, x: Any, training: bool = False) -> Any:
    if training and self.recompute and self.trainable:
      return run_reversible(self.units, x)
    for unit in self.units:
      x = unit(x, training=training)
    return x

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "channels": self.channels, "num_units": self.num_units,
            "recompute": self.recompute}


@keras.saving.register_keras_serializable(package="psl_tf")
class Transition(layers.Layer):
  """Halves the resolution (2x2 average pool) and doubles the channels (zero padding)."""

  def call(self, x: Any) -> Any:
    x = ops.average_pool(x, 2, 2, padding="same")
    half = x.shape[-1] // 2
    return ops.pad(x, [[0, 0], [0, 0], [0, 0], [half, half]])


def revnet50(filters_factor: int = 4, recompute: bool = False,
             input_shape: blocks.Shape = (None, None, 3)) -> keras.Model:
  """RevNet-50 as b1..b5 (see the module docstring).

  Args:
    filters_factor: width multiplier; b2 has ``64 * filters_factor`` channels and each later
      block doubles it. 4 gives ResNet-50's block widths; Kolesnikov et al.'s rotation runs
      use 16.
    recompute: recompute activations in the backward pass instead of storing them.
    input_shape: the image shape; spatial sizes may be None.
  """
  if isinstance(filters_factor, bool) or not isinstance(filters_factor, int) or filters_factor < 1:
    raise ValueError(f"--filters_factor must be a positive integer, got {filters_factor!r}")
  width = 64 * filters_factor

  def root(x: Any) -> Any:
    return _conv(width, 7, 2, name="root_conv")(x)

  def stage(index: int, transition: bool) -> blocks.BlockFn:
    channels = width * 2 ** (index - 2)

    def apply(x: Any) -> Any:
      if transition:
        x = Transition(name=f"transition{index}")(x)
      else:
        # Same values either way; the memory-saving pool keeps only argmax for its gradient.
        x = (MaxPool(name="pool1") if recompute else
             layers.MaxPooling2D(3, 2, padding="same", name="pool1"))(x)
      x = ReversibleStage(channels, UNITS[index - 2], recompute=recompute,
                          name=f"rev{index}")(x)
      if index == 5:
        x = layers.ReLU(name="final_relu")(_bn("final_bn")(x))
      return x
    return apply

  return blocks.assemble([root, stage(2, False), stage(3, True), stage(4, True),
                          stage(5, True)], input_shape=input_shape)


# ---- the same network from Keras' built-in layers only ---------------------------------------

def _builtin_unit(x: Any, channels: int, prefix: str) -> Any:
  """A `ReversibleUnit` (inference and ordinary training) from built-in layers and ops:
  ``[x1, x2] -> [x2, x1 + F(x2)]``; layer names `<prefix>_bn1`, `<prefix>_conv1`, ..."""
  x1, x2 = ops.split(x, 2, axis=-1)
  inner = channels // 8
  y = x2
  for i, (filters, kernel) in enumerate(((inner, 1), (inner, 3), (channels // 2, 1)), 1):
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                  name=f"{prefix}_bn{i}")(y)
    y = layers.ReLU(name=f"{prefix}_relu{i}")(y)
    y = layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                      name=f"{prefix}_conv{i}")(y)
  y1 = layers.Add(name=f"{prefix}_add")([x1, y])
  return layers.Concatenate(name=f"{prefix}_out")([x2, y1])


def revnet50_builtin(filters_factor: int = 4,
                     input_shape: blocks.Shape = (None, None, 3)) -> keras.Model:
  """`revnet50` built from Keras' built-in layers and `keras.ops` only, for files that load
  with plain Keras (no psl_tf; `backbone.keras` of an export).

  The same function in inference and in ordinary training (no recomputation). Its variables
  are `revnet50`'s under flat names (`rev2/unit1/residual/bn1/gamma` is
  `rev2_unit1_bn1/gamma` here); `to_builtin` copies a trained RevNet into it.
  """
  width = 64 * filters_factor

  def root(x: Any) -> Any:
    return _conv(width, 7, 2, name="root_conv")(x)

  def stage(index: int, transition: bool) -> blocks.BlockFn:
    channels = width * 2 ** (index - 2)

    def apply(x: Any) -> Any:
      if transition:
        x = layers.AveragePooling2D(2, 2, padding="same", name=f"transition{index}_pool")(x)
        half = x.shape[-1] // 2
        x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [half, half]])
      else:
        x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
      for unit in range(UNITS[index - 2]):
        x = _builtin_unit(x, channels, f"rev{index}_unit{unit + 1}")
      if index == 5:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                      name="final_bn")(x)
        x = layers.ReLU(name="final_relu")(x)
      return x
    return apply

  return blocks.assemble([root, stage(2, False), stage(3, True), stage(4, True),
                          stage(5, True)], input_shape=input_shape)


def builtin_variable_path(path: str) -> str:
  """The path of a `revnet50` variable in `revnet50_builtin`."""
  parts = path.split("/")
  if len(parts) == 5 and parts[2] == "residual":  # rev2/unit1/residual/bn1/gamma
    return f"{parts[0]}_{parts[1]}_{parts[3]}/{parts[4]}"
  return path


def to_builtin(backbone: keras.Model) -> keras.Model:
  """A `revnet50_builtin` holding `backbone`'s weights (a `revnet50`, any `recompute`)."""
  root = backbone.get_layer("b1").get_layer("root_conv")
  filters_factor = root.filters // 64
  plain = revnet50_builtin(filters_factor, input_shape=tuple(backbone.input_shape[1:]))
  for source_block, target_block in zip(blocks.get_blocks(backbone), blocks.get_blocks(plain)):
    targets = {v.path: v for v in target_block.weights}
    sources = {builtin_variable_path(v.path): v for v in source_block.weights}
    if set(targets) != set(sources):
      raise ValueError(f"{source_block.name}: the built-in RevNet's variables differ: "
                       f"{sorted(set(targets) ^ set(sources))[:4]}")
    for path, variable in sources.items():
      targets[path].assign(variable)
  return plain
