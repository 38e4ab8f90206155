"""ResNet backbones cut into the five resolution blocks b1..b5.

The contract every backbone in this package keeps (see `psl_tf.models.blocks`):

* a functional `keras.Model` named ``backbone`` whose input is a batch of float RGB
  images in [0, 1] of any spatial size and whose output is a dict ``{"b1": ..., "b5": ...}``;
* it is made of exactly five functional sub-models named ``b1``..``b5``, each taking the
  previous block's output, so a stage can run any contiguous range of blocks on its own;
* ``b1`` starts with a fixed (non-trainable) ImageNet mean/std normalisation, so exported
  models and probes only ever feed images in [0, 1].
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import layers

from psl_tf.models import blocks

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# He et al. initialise convolutions with fan-out variance scaling. A fresh initializer per
# layer: a Keras 3 initializer made without a seed fixes one at construction, so a shared
# instance would give every same-shaped conv the same weights and ignore set_random_seed.
def _conv_init() -> keras.initializers.Initializer:
  return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="truncated_normal")



def _conv(filters: int, kernel: int, strides: int = 1,
          name: str | None = None) -> layers.Conv2D:
  return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                       kernel_initializer=_conv_init(), name=name)


def _bn(name: str | None = None, zero_gamma: bool = False) -> layers.BatchNormalization:
  return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name,
                                   gamma_initializer="zeros" if zero_gamma else "ones")


def bottleneck(x: Any, filters: int, strides: int, name: str) -> Any:
  """ResNet v1.5 bottleneck (stride on the 3x3 conv), 4x channel expansion."""
  out_channels = 4 * filters
  shortcut = x
  if strides != 1 or x.shape[-1] != out_channels:
    shortcut = _conv(out_channels, 1, strides, name=f"{name}_proj_conv")(x)
    shortcut = _bn(name=f"{name}_proj_bn")(shortcut)
  y = _conv(filters, 1, name=f"{name}_conv1")(x)
  y = layers.ReLU(name=f"{name}_relu1")(_bn(name=f"{name}_bn1")(y))
  y = _conv(filters, 3, strides, name=f"{name}_conv2")(y)
  y = layers.ReLU(name=f"{name}_relu2")(_bn(name=f"{name}_bn2")(y))
  y = _conv(out_channels, 1, name=f"{name}_conv3")(y)
  y = _bn(name=f"{name}_bn3", zero_gamma=True)(y)
  return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def basic_block(x: Any, filters: int, strides: int, name: str) -> Any:
  """Two 3x3 convolutions with an identity (or projected) shortcut."""
  shortcut = x
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv(filters, 1, strides, name=f"{name}_proj_conv")(x)
    shortcut = _bn(name=f"{name}_proj_bn")(shortcut)
  y = _conv(filters, 3, strides, name=f"{name}_conv1")(x)
  y = layers.ReLU(name=f"{name}_relu1")(_bn(name=f"{name}_bn1")(y))
  y = _conv(filters, 3, name=f"{name}_conv2")(y)
  y = _bn(name=f"{name}_bn2", zero_gamma=True)(y)
  return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def _stage_fn(unit: Callable[..., Any], filters: int, num_units: int,
              first_stride: int, prefix: str) -> blocks.BlockFn:
  def apply(x: Any) -> Any:
    for i in range(num_units):
      x = unit(x, filters, first_stride if i == 0 else 1, name=f"{prefix}_{i + 1}")
    return x
  return apply


def resnet50(input_shape: blocks.Shape = (None, None, 3)) -> keras.Model:
  """ResNet-50 (He et al. 2016) as b1..b5; about 23.5M parameters, no classifier.

  At 224x224 the block outputs are 112x112x64, 56x56x256, 28x28x512, 14x14x1024 and
  7x7x2048. The max-pool belongs to b2 (the paper's conv2_x block).
  """
  def stem(x: Any) -> Any:
    x = _conv(64, 7, 2, name="conv1")(x)
    return layers.ReLU(name="conv1_relu")(_bn(name="conv1_bn")(x))

  def conv2(x: Any) -> Any:
    x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    return _stage_fn(bottleneck, 64, 3, 1, "conv2")(x)

  return blocks.assemble([stem, conv2,
                          _stage_fn(bottleneck, 128, 4, 2, "conv3"),
                          _stage_fn(bottleneck, 256, 6, 2, "conv4"),
                          _stage_fn(bottleneck, 512, 3, 2, "conv5")],
                         input_shape=input_shape)


def cifar_resnet(depth: int = 18, width: int = 64,
                 input_shape: blocks.Shape = (None, None, 3)) -> keras.Model:
  """A CIFAR-style ResNet for 32-96 px images: 3x3 stem, no max-pool.

  Args:
    depth: 10, 18 or 34 (basic blocks), or 50 (bottlenecks).
    width: channels of the stem and of b2; doubled at each later block.
    input_shape: the image shape; spatial sizes may be None.

  Blocks: b1 = stem (full resolution), b2 = stage 1 (stride 1), b3..b5 = stages 2..4
  (stride 2 each), so a 32 px image gives 32, 32, 16, 8 and 4 px maps.
  """
  units = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
  if depth not in units:
    raise ValueError(f"cifar_resnet depth must be one of {sorted(units)}, got {depth}")
  unit = bottleneck if depth == 50 else basic_block

  def stem(x: Any) -> Any:
    x = _conv(width, 3, 1, name="conv1")(x)
    return layers.ReLU(name="conv1_relu")(_bn(name="conv1_bn")(x))

  fns = [stem] + [_stage_fn(unit, width * 2 ** i, n, 1 if i == 0 else 2, f"conv{i + 2}")
                  for i, n in enumerate(units[depth])]
  return blocks.assemble(fns, input_shape=input_shape)
