"""The contrastive augmentation ladder T1 ⊂ T2 ⊂ T3 (paper 3.3.3), as per-example maps.

Every function takes a float RGB image in [0, 1] and a stateless seed ``[2]`` and draws all
its randomness from stateless ops on that seed, so the same seed gives the same view eagerly
and inside `tf.data`.

* **T1** = random resized crop (area 0.08–1 of the image, aspect ratio 3/4–4/3, resized to
  ``size`` x ``size``) + horizontal flip (p = 0.5).
* **T2** = T1 + SimCLR's colour distortion: with probability ``color_prob`` (0.8) a colour
  jitter of strength s (brightness, contrast and saturation factors in [1 - 0.8s, 1 + 0.8s],
  hue shift in [-0.2s, 0.2s], applied in a random order, clipped to [0, 1] after each), then
  with probability ``gray_prob`` (0.2) conversion to grey (replicated over the 3 channels).
* **T3** = T2 + Gaussian blur with probability ``blur_prob`` (0.5): a separable kernel of
  about 10% of the side (odd, ``2 * (size // 20) + 1`` taps), sigma uniform in [0.1, 2.0],
  reflect padding (so a flat image stays flat); then **Sobel filtering** with probability
  ``sobel_prob`` (0.2): the view is converted to grey, `tf.image.sobel_edges` gives the
  vertical and horizontal derivatives, and the view is replaced by the gradient magnitude
  divided by its largest value in the view (a flat view gives zeros), replicated over the
  3 channels. The output is an RGB edge map in [0, 1] of the same shape as the input, so
  the backbone and the other view need no special case. Each of the two views draws its own
  coins, so a positive pair may be an edge map against a colour view.
"""

import dataclasses

import tensorflow as tf

NUM_LEVELS = 3


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Strengths and probabilities of the ladder (defaults: SimCLR on ImageNet).

  Attributes:
    crop_min_scale: smallest crop area as a fraction of the image (SimCLR 0.08, MoCo 0.2).
    crop_max_scale: largest crop area fraction.
    crop_ratio: (min, max) aspect ratio of the crop.
    flip: random horizontal flip in every level.
    color_strength: jitter strength s (SimCLR ImageNet 1.0, CIFAR 0.5; MoCo v2 0.5).
    color_prob: probability of the colour jitter (T2 and T3).
    gray_prob: probability of grey conversion (T2 and T3).
    blur_prob: probability of the Gaussian blur (T3).
    blur_sigma: (min, max) blur sigma in pixels.
    blur_kernel_fraction: kernel size as a fraction of the side.
    sobel_prob: probability of replacing the view by its Sobel edge map (T3).
  """
  crop_min_scale: float = 0.08
  crop_max_scale: float = 1.0
  crop_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
  flip: bool = True
  color_strength: float = 1.0
  color_prob: float = 0.8
  gray_prob: float = 0.2
  blur_prob: float = 0.5
  blur_sigma: tuple = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1
  sobel_prob: float = 0.2

  def __post_init__(self):
    if not 0.0 < self.crop_min_scale <= self.crop_max_scale <= 1.0:
      raise ValueError(f"crop scales need 0 < min <= max <= 1, got {self.crop_min_scale}, "
                       f"{self.crop_max_scale}")
    if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise ValueError(f"crop aspect ratios need 0 < min <= max, got {self.crop_ratio}")
    for name in ("color_prob", "gray_prob", "blur_prob", "sobel_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
    if self.color_strength < 0:
      raise ValueError(f"color_strength must be >= 0, got {self.color_strength}")
    if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
      raise ValueError(f"blur sigma range needs 0 < min <= max, got {self.blur_sigma}")


def level_ops(level):
  """Names of the augmentations in T_level (for summaries and stage headers)."""
  if not 1 <= level <= NUM_LEVELS:
    raise ValueError(f"the augmentation ladder has levels 1..{NUM_LEVELS}, got {level}")
  ops = ["random_resized_crop", "flip"]
  if level >= 2:
    ops += ["color_jitter", "grayscale"]
  if level >= 3:
    ops += ["gaussian_blur", "sobel"]
  return ops


def _coin(seed, prob):
  """A stateless Bernoulli(prob) draw as a scalar bool tensor."""
  return tf.random.stateless_uniform([], seed) < prob


def _uniform(seed, low, high):
  return tf.random.stateless_uniform([], seed, low, high)


def random_resized_crop(image, size, seed, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
  """Inception-style crop of a random area fraction and aspect ratio, resized to size²."""
  shape = tf.shape(image)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(ratio), area_range=tuple(scale),
      max_attempts=100, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  out = tf.image.resize(crop, [size, size], method="bilinear", antialias=False)
  return tf.ensure_shape(out, [size, size, 3])


def color_jitter(image, strength, seed):
  """SimCLR's jitter (brightness, contrast, saturation, hue) in a random order."""
  s = float(strength)
  seeds = split(seed, 5)
  b = _uniform(seeds[0], max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
  c = _uniform(seeds[1], max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
  sat = _uniform(seeds[2], max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
  h = _uniform(seeds[3], -0.2 * s, 0.2 * s) if s > 0 else tf.constant(0.0)
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
  ops = [
      lambda x: x * b,  # brightness as a multiplicative factor (SimCLR v2's choice)
      lambda x: tf.image.adjust_contrast(x, c),
      lambda x: tf.image.adjust_saturation(x, sat),
      lambda x: tf.image.adjust_hue(x, h),
  ]
  for i in range(4):
    image = tf.switch_case(order[i], [lambda op=op: op(image) for op in ops])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def to_grayscale(image):
  """Luma replicated over 3 channels."""
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def blur_taps(size, fraction=0.1):
  """Odd kernel length of about `fraction` of the side (at least 3)."""
  radius = max(1, int(size * fraction) // 2)
  return 2 * radius + 1


def gaussian_blur(image, sigma, taps):
  """Separable Gaussian blur with reflect padding; `taps` is the (odd) kernel length."""
  radius = taps // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  kernel /= tf.reduce_sum(kernel)
  channels = 3
  horizontal = tf.tile(tf.reshape(kernel, [1, taps, 1, 1]), [1, 1, channels, 1])
  vertical = tf.tile(tf.reshape(kernel, [taps, 1, 1, 1]), [1, 1, channels, 1])
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                  mode="REFLECT")
  out = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
  out = tf.nn.depthwise_conv2d(out, vertical, [1, 1, 1, 1], "VALID")
  return tf.clip_by_value(out[0], 0.0, 1.0)


def sobel(image):
  """RGB view -> RGB edge map in [0, 1]: grey, Sobel magnitude, divided by its maximum."""
  gray = tf.image.rgb_to_grayscale(image)[None]  # [1, H, W, 1]
  edges = tf.image.sobel_edges(gray)  # [1, H, W, 1, 2]: d/dy, d/dx
  magnitude = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1))[0]  # [H, W, 1]
  peak = tf.reduce_max(magnitude)
  magnitude = tf.math.divide_no_nan(magnitude, peak)
  return tf.clip_by_value(tf.tile(magnitude, [1, 1, 3]), 0.0, 1.0)


def split(seed, num):
  """`num` independent stateless seeds from one [2] seed."""
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num))


def view(image, level, size, seed, options=AugmentOptions()):
  """One augmented view of a float [H, W, 3] image in [0, 1] under T_level.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  level_ops(level)  # validates the level
  o = options
  seeds = split(seed, 9)
  x = random_resized_crop(image, size, seeds[0], (o.crop_min_scale, o.crop_max_scale),
                          o.crop_ratio)
  if o.flip:
    x = tf.image.stateless_random_flip_left_right(x, seeds[1])
  if level >= 2:
    x = tf.cond(_coin(seeds[2], o.color_prob),
                lambda: color_jitter(x, o.color_strength, seeds[3]), lambda: x)
    x = tf.cond(_coin(seeds[4], o.gray_prob), lambda: to_grayscale(x), lambda: x)
  if level >= 3:
    taps = blur_taps(size, o.blur_kernel_fraction)
    sigma = _uniform(seeds[6], o.blur_sigma[0], o.blur_sigma[1])
    x = tf.cond(_coin(seeds[5], o.blur_prob), lambda: gaussian_blur(x, sigma, taps),
                lambda: x)
    x = tf.cond(_coin(seeds[7], o.sobel_prob), lambda: sobel(x), lambda: x)
  return tf.ensure_shape(x, [size, size, 3])


def two_views(image, level, size, seed, options=AugmentOptions()):
  """Two independent views of one image, stacked: float32 [2, size, size, 3]."""
  if image.dtype == tf.uint8:
    image = tf.cast(image, tf.float32) / 255.0
  image = tf.cast(image, tf.float32)
  seed_a, seed_b = split(seed, 2)
  return tf.stack([view(image, level, size, seed_a, options),
                   view(image, level, size, seed_b, options)])
