"""Multi-level image rotation (paper 3.3.2): predict which angle of R_k was applied.

Levels: R1 = {0, 180}, R2 = R1 + {90, 270}, R3 = R2 + {45, 135, 225, 315} degrees,
counter-clockwise. The angle list is ordered so that R_k is a prefix of R3 and label i means
the same angle at every level.

Design decisions (documented in the README):

* **One sampled angle per image.** Each image in a batch gets one angle drawn uniformly from
  R_k, rather than every angle of each image as RotNet does. With 2, 4 and 8 angles the
  all-angles form would make a level-3 step 4x the cost of a level-1 step, confounding the
  PSL-vs-E2E comparison at equal epochs; sampling keeps every step the same size.
* **Multiples of 90 degrees are exact pixel rotations** (`tf.image.rot90`); other angles use
  bilinear `ImageProjectiveTransformV3`.
* **No corner may reveal the angle.** A square rotated by 45 degrees has empty corners, so the
  rotated image is centre-cropped to the largest square inside it. With ``crop="uniform"``
  (default) every angle at every level gets that same 1/sqrt(2) crop, so neither empty
  corners nor a zoom factor that differs between angles gives the answer away. With
  ``crop="per_angle"`` each angle gets its own largest crop (1 for multiples of 90), which is
  closer to the paper's wording but leaks scale.
"""

import math

import tensorflow as tf

from psl_tf.tasks import base

# Counter-clockwise degrees; R_k is the prefix of this list of length LEVEL_SIZES[k - 1].
ANGLES = (0, 180, 90, 270, 45, 135, 225, 315)
LEVEL_SIZES = (2, 4, 8)
CROP_MODES = ("uniform", "per_angle")


def rotate(image, angle_degrees):
  """Rotates a square [S, S, C] float image counter-clockwise about its centre.

  Multiples of 90 degrees are exact (`tf.image.rot90`, equal to `np.rot90`); other angles
  are bilinear with zero fill outside the source.
  """
  angle = tf.cast(angle_degrees, tf.int32) % 360

  def exact():
    return tf.image.rot90(image, k=angle // 90)

  def bilinear():
    side = tf.cast(tf.shape(image)[0], tf.float32)
    theta = tf.cast(angle, tf.float32) * (math.pi / 180.0)
    c, s = tf.cos(theta), tf.sin(theta)
    centre = (side - 1.0) / 2.0
    # Output pixel (x, y) samples the input at R(theta) (x - centre, y - centre) + centre.
    transform = tf.stack([c, -s, centre - c * centre + s * centre,
                          s, c, centre - s * centre - c * centre, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]

  return tf.cond(tf.equal(angle % 90, 0), exact, bilinear)


def inscribed_fraction(angle_degrees):
  """Side of the largest axis-aligned square inside a rotated square, as a fraction."""
  theta = tf.cast(angle_degrees, tf.float32) * (math.pi / 180.0)
  return 1.0 / (tf.abs(tf.cos(theta)) + tf.abs(tf.sin(theta)))


class RotationTask(base.Task):
  """Predict the index of the rotation angle within R_k."""

  name = "rotation"
  num_levels = 3
  option_prefixes = ("rotation",)

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, crop="uniform"):
    super().__init__(image_spec, head_hidden)
    if crop not in CROP_MODES:
      raise ValueError(f"rotation crop must be one of {CROP_MODES}, got {crop!r}")
    self.crop = crop

  def angles(self, level):
    self.check_level(level)
    return ANGLES[:LEVEL_SIZES[level - 1]]

  def num_classes(self, level):
    return len(self.angles(level))

  def describe_level(self, level):
    return f"R{level} = {{{', '.join(f'{a}°' for a in sorted(self.angles(level)))}}}"

  def level_summary(self, level):
    return {"angles": list(self.angles(level))}

  def example_fn(self, level, training):
    angles = tf.constant(self.angles(level), tf.int32)
    n = len(self.angles(level))
    spec = self.image_spec
    uniform = self.crop == "uniform"

    def fn(image, label, seed):
      del label  # the pretext label is the angle
      crop_seed, flip_seed, angle_seed = base.split_seed(seed, 3)
      image = base.resize_shorter_side(base.to_float(image), spec.resize)
      if training:
        square = base.random_square_crop(image, spec.resize, crop_seed)
        square = tf.image.stateless_random_flip_left_right(square, flip_seed)
      else:
        square = base.center_crop(image, spec.resize)
      target = tf.random.stateless_uniform([], angle_seed, 0, n, dtype=tf.int32)
      angle = angles[target]
      rotated = rotate(square, angle)
      fraction = (tf.constant(1.0 / math.sqrt(2.0)) if uniform else inscribed_fraction(angle))
      # floor, so the crop stays inside the rotated square; the small slack keeps float
      # error from shaving a pixel off the exact fraction 1 of multiples of 90 degrees.
      side = tf.cast(tf.floor(fraction * spec.resize + 1e-3), tf.int32)
      out = tf.image.resize(base.center_crop(rotated, side), [spec.size, spec.size],
                            antialias=True)
      return tf.ensure_shape(out, [spec.size, spec.size, 3]), target

    return fn

