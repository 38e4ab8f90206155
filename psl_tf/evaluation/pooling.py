"""Average pooling of a block's feature map to about 9,000 values (Goyal et al. 2019).

Linear probes on every block compare blocks of very different shapes (112x112x64 ... 7x7x2048
for ResNet-50 at 224). Goyal et al. pool each map so that it keeps about 9,000 values; their
ResNet-50 settings at 224 px are ``REFERENCE`` below. For any other input size, channel count
or backbone the pooling is derived by `derive_pooling`:

* the output side is ``o = round(sqrt(target / channels))`` (12, 6, 4, 3, 2 for 64 ... 2048
  channels), never more than the map's side (a small map is kept whole);
* the window overlaps by about half: ``k = ceil(2 H / (o + 1))``,
  ``s = floor((H - k) / (o - 1))``, and then ``k = H - (o - 1) s`` so that the windows tile the
  map exactly without padding.

That rule gives Goyal's res2, res3 and res4 kernels exactly (k16 s8, k13 s5, k8 s3). Their
conv1 (non-overlapping k10 s10 with 4 px of padding) and res5 (k6 s1) settings follow no single
rule, so when a map's shape is one of the five published ones the published setting is used
verbatim (`use_reference=False` turns that off).
"""

import dataclasses
import math

import keras

TARGET_VALUES = 9000


@dataclasses.dataclass(frozen=True)
class Pooling:
  """Square average pooling: zero padding `padding` on every side, then a `kernel` window
  moved by `stride` ('valid'). Padded zeros count in the average (PyTorch's default)."""
  kernel: int
  stride: int
  padding: int = 0

  def output_side(self, side):
    return (side + 2 * self.padding - self.kernel) // self.stride + 1


# Goyal et al. 2019, ResNet-50 at 224 px: (side, channels) -> pooling.
REFERENCE = {
    (112, 64): Pooling(10, 10, 4),    # conv1 -> 64 x 12 x 12 = 9216
    (56, 256): Pooling(16, 8, 0),     # res2  -> 256 x 6 x 6  = 9216
    (28, 512): Pooling(13, 5, 0),     # res3  -> 512 x 4 x 4  = 8192
    (14, 1024): Pooling(8, 3, 0),     # res4  -> 1024 x 3 x 3 = 9216
    (7, 2048): Pooling(6, 1, 0),      # res5  -> 2048 x 2 x 2 = 8192
}


def derive_pooling(side, channels, target=TARGET_VALUES, use_reference=True):
  """The pooling of a `side` x `side` x `channels` map down to about `target` values."""
  if side < 1 or channels < 1:
    raise ValueError(f"cannot pool a {side}x{side}x{channels} feature map")
  if use_reference and target == TARGET_VALUES and (side, channels) in REFERENCE:
    return REFERENCE[(side, channels)]
  out = max(1, min(side, int(round(math.sqrt(target / channels)))))
  if out == side:
    return Pooling(1, 1, 0)
  if out == 1:
    return Pooling(side, 1, 0)
  kernel = math.ceil(2 * side / (out + 1))
  stride = max(1, (side - kernel) // (out - 1))
  kernel = side - (out - 1) * stride
  return Pooling(kernel, stride, 0)


def pooled_size(feature_shape, pooling):
  """Number of values after pooling a [H, W, C] map."""
  h, w, c = feature_shape
  return pooling.output_side(h) * pooling.output_side(w) * c


def pooling_layers(feature_shape, target=TARGET_VALUES, use_reference=True, name="pool"):
  """Keras layers (padding, average pooling, flatten) for a [H, W, C] map.

  Non-square maps are pooled with the rule applied to the shorter side.
  """
  h, w, c = feature_shape
  if h is None or w is None:
    raise ValueError("probe pooling needs a fixed feature-map size; build the backbone probe "
                     "with a fixed image size")
  pooling = derive_pooling(min(h, w), c, target, use_reference)
  stack = []
  if pooling.padding:
    stack.append(keras.layers.ZeroPadding2D(pooling.padding, name=f"{name}_pad"))
  if pooling.kernel > 1 or pooling.stride > 1:
    stack.append(keras.layers.AveragePooling2D(pooling.kernel, pooling.stride, padding="valid",
                                               name=f"{name}_avg"))
  stack.append(keras.layers.Flatten(name=f"{name}_flat"))
  return pooling, stack
