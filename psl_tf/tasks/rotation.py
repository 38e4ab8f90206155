"""Multi-level image rotation (paper 3.3.2): predict which angle of R_k was applied.

Levels: R1 = {0, 180}, R2 = R1 + {90, 270}, R3 = R2 + {45, 135, 225, 315} degrees,
counter-clockwise. The angle list is ordered so that R_k is a prefix of R3 and label i means
the same angle at every level.

Design decisions (documented in the README):

* **One sampled angle per image.** Each image in a batch gets one angle drawn uniformly from
  R_k, rather than every angle of each image as RotNet does. With 2, 4 and 8 angles the
  all-angles form would make a level-3 step 4x the cost of a level-1 step, confounding the
  PSL-vs-E2E comparison at equal epochs; sampling keeps every step the same size.
* **Every angle is resampled the same way.** Rotation, centre crop and resize are one bilinear
  `ImageProjectiveTransformV3` warp for every angle, 0 degrees included. (Exact `rot90` for
  multiples of 90 degrees and bilinear resampling for the others gave the 45-degree family
  about 20 % less high-frequency energy: a low-level cue to the angle.)
* **No corner may reveal the angle.** A square rotated by 45 degrees has empty corners, so the
  rotated image is centre-cropped to the largest square inside it. With ``crop="uniform"``
  (default) every angle at every level gets that same 1/sqrt(2) crop, so neither empty
  corners nor a zoom factor that differs between angles gives the answer away. With
  ``crop="per_angle"`` each angle gets its own largest crop (1 for multiples of 90), which is
  closer to the paper's wording but leaks scale.
"""

import dataclasses
import math

import tensorflow as tf

from psl_tf import options as options_lib
from psl_tf.data import images as image_lib
from psl_tf.tasks import base

# Counter-clockwise degrees; R_k is the prefix of this list of length LEVEL_SIZES[k - 1].
ANGLES = (0, 180, 90, 270, 45, 135, 225, 315)
LEVEL_SIZES = (2, 4, 8)
CROP_MODES = ("uniform", "per_angle")


def warp(image, angle_degrees, fraction, size):
  """Rotates a square [S, S, C] float image about its centre, crops its centre and resizes:
  one bilinear resampling for every angle.

  The output pixel (x, y) samples the input at ``R(angle) m (p - c_out) + c_in``, where
  ``m = fraction * S / size`` and ``c`` are the centres: a counter-clockwise rotation, the
  central crop of side ``fraction * S`` and its resize to ``size`` in one transform. Every
  angle, 0 degrees included, goes through the same bilinear interpolation at the same scale,
  so the amount of blur cannot tell one angle family from another (an exact `rot90` for
  multiples of 90 degrees and a bilinear warp for the others would: the 45-degree family came
  out measurably smoother). Outside the source the fill is zero, so a crop that is too large
  shows black corners (the tests check it never does).
  """
  image = tf.convert_to_tensor(image, tf.float32)
  side = tf.cast(tf.shape(image)[0], tf.float32)
  theta = tf.cast(angle_degrees, tf.float32) * (math.pi / 180.0)
  m = tf.cast(fraction, tf.float32) * side / tf.cast(size, tf.float32)
  c, s = m * tf.cos(theta), m * tf.sin(theta)
  c_in = (side - 1.0) / 2.0
  c_out = (tf.cast(size, tf.float32) - 1.0) / 2.0
  transform = tf.stack([c, -s, c_in - c * c_out + s * c_out,
                        s, c, c_in - s * c_out - c * c_out, 0.0, 0.0])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None],
      output_shape=tf.stack([size, size]), fill_value=0.0, interpolation="BILINEAR",
      fill_mode="CONSTANT")
  return out[0]


def rotate(image, angle_degrees):
  """Rotates a square [S, S, C] float image counter-clockwise about its centre (bilinear,
  zero fill; multiples of 90 degrees equal `np.rot90` to float rounding)."""
  return warp(image, angle_degrees, 1.0, tf.shape(image)[0])


def inscribed_fraction(angle_degrees):
  """Side of the largest axis-aligned square inside a rotated square, as a fraction."""
  theta = tf.cast(angle_degrees, tf.float32) * (math.pi / 180.0)
  return 1.0 / (tf.abs(tf.cos(theta)) + tf.abs(tf.sin(theta)))


class RotationTask(base.Task):
  """Predict the index of the rotation angle within R_k."""

  name = "rotation"
  num_levels = 3

  @dataclasses.dataclass(frozen=True)
  class Options:
    flag_prefix = "rotation"
    crop: str = options_lib.option(
        "uniform", "Centre crop after rotating: the same 1/sqrt(2) crop for every angle, or "
        "each angle's largest crop (leaks a zoom cue).", choices=CROP_MODES)

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, options=None, head_grid=1,
               **overrides):
    super().__init__(image_spec, head_hidden, options, head_grid, **overrides)
    self.crop = self.options.crop

  def angles(self, level):
    self.check_level(level)
    return ANGLES[:LEVEL_SIZES[level - 1]]

  def num_classes(self, level):
    return len(self.angles(level))

  def describe_level(self, level):
    return f"R{level} = {{{', '.join(f'{a}°' for a in sorted(self.angles(level)))}}}"

  def level_summary(self, level):
    return {"angles": list(self.angles(level))}

  def rotated_view(self, square, angle):
    """The image the network sees: a [resize, resize, 3] float square rotated by `angle`
    degrees, centre-cropped and resized to [size, size, 3] in one warp."""
    spec = self.image_spec
    # The warp only enlarges: at the paper's ratio (shorter side 256/224 of the crop) it
    # samples the 1/sqrt(2) crop at 0.81 source pixels per output pixel. A larger --resize
    # would make it shrink, and bilinear shrinking aliases differently along a rotated grid
    # than along the axes (13 % more Laplacian energy at 0 than at 45 degrees for 48 -> 24 px),
    # so such a square is first brought down to that ratio with an antialiased resize.
    warp_side = int(round(spec.size * 256 / 224))
    if spec.resize > warp_side:
      square = tf.image.resize(square, [warp_side, warp_side], antialias=True)
    fraction = (tf.constant(1.0 / math.sqrt(2.0)) if self.crop == "uniform"
                else inscribed_fraction(angle))
    return tf.ensure_shape(warp(square, angle, fraction, spec.size), [spec.size, spec.size, 3])

  def batch_fn(self, level, training):
    """`example_fn` for a batch of equal-sized images, in two image ops per batch: one
    resize, and one bilinear warp whose per-image transform composes the random
    crop, the flip, the rotation, the centre crop and the resize. Equal to stacking
    `example_fn` to float rounding (the warp samples only inside each crop, so the rest of
    the image never enters). The per-image random draws are `example_fn`'s own. Training
    only, and only where `rotated_view` does not first shrink the square."""
    spec = self.image_spec
    if not training or spec.resize > int(round(spec.size * 256 / 224)):
      return None
    angles = tf.constant(self.angles(level), tf.int32)
    n = len(self.angles(level))
    uniform = self.crop == "uniform"

    def fn(images, labels, seeds):
      del labels
      images = image_lib.resize_shorter_side_batch(image_lib.to_float(images), spec.resize)
      shape = tf.shape(images)[1:]

      def draws(seed):
        crop_seed, flip_seed, angle_seed = image_lib.split_seed(seed, 3)
        offset = image_lib.random_crop_offset(shape, spec.resize, crop_seed)
        flip = image_lib.random_flip_coin(flip_seed)
        target = tf.random.stateless_uniform([], angle_seed, 0, n, dtype=tf.int32)
        return offset, flip, target

      offsets, flips, targets = tf.map_fn(
          draws, seeds, fn_output_signature=(tf.int32, tf.bool, tf.int32))
      theta = tf.cast(tf.gather(angles, targets), tf.float32) * (math.pi / 180.0)
      fraction = (tf.fill(tf.shape(theta), 1.0 / math.sqrt(2.0)) if uniform
                  else inscribed_fraction(tf.gather(angles, targets)))
      side = float(spec.resize)
      m = fraction * side / float(spec.size)
      c, s = m * tf.cos(theta), m * tf.sin(theta)
      c_in = (side - 1.0) / 2.0
      c_out = (spec.size - 1.0) / 2.0
      # Square coordinates of output pixel (x, y), as `warp` computes them ...
      ax, bx, tx = c, -s, c_in - c * c_out + s * c_out
      ay, by, ty = s, c, c_in - s * c_out - c * c_out
      # ... then the flip (x -> side - 1 - x) and the crop's offset into the image.
      sign = tf.where(flips, -1.0, 1.0)
      ox = tf.cast(offsets[:, 1], tf.float32) + tf.where(flips, side - 1.0, 0.0)
      oy = tf.cast(offsets[:, 0], tf.float32)
      zeros = tf.zeros_like(theta)
      transforms = tf.stack([sign * ax, sign * bx, sign * tx + ox,
                             ay, by, ty + oy, zeros, zeros], axis=1)
      out = tf.raw_ops.ImageProjectiveTransformV3(
          images=images, transforms=transforms, output_shape=[spec.size, spec.size],
          fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
      return tf.ensure_shape(out, [None, spec.size, spec.size, 3]), targets

    return fn

  def example_fn(self, level, training):
    angles = tf.constant(self.angles(level), tf.int32)
    n = len(self.angles(level))
    spec = self.image_spec

    def fn(image, label, seed):
      del label  # the pretext label is the angle
      crop_seed, flip_seed, angle_seed = image_lib.split_seed(seed, 3)
      image = image_lib.resize_shorter_side(image_lib.to_float(image), spec.resize)
      if training:
        square = image_lib.random_square_crop(image, spec.resize, crop_seed)
        square = tf.image.stateless_random_flip_left_right(square, flip_seed)
      else:
        square = image_lib.center_crop(image, spec.resize)
      target = tf.random.stateless_uniform([], angle_seed, 0, n, dtype=tf.int32)
      angle = angles[target]
      return self.rotated_view(square, angle), target

    return fn

