"""Image helpers of the input pipelines: dtype, shorter-side resize, crops, stateless seeds.

Shared by the task pipelines (`psl_tf.tasks`), the evaluation views (`psl_tf.data.views`) and
the export (`psl_tf.export`), so training, evaluation and the SavedModel see one geometry.
"""

import tensorflow as tf


def to_float(image):
  """uint8 [0, 255] -> float32 [0, 1]; float input is passed through."""
  if image.dtype == tf.uint8:
    return tf.cast(image, tf.float32) / 255.0
  return tf.cast(image, tf.float32)


def resize_shorter_side(image, size):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  return _resize(image, *_shorter_side_size(tf.shape(image)[0], tf.shape(image)[1], size))


def _shorter_side_size(h, w, size):
  """([new_h, new_w], scale) that brings the shorter of h and w to `size`."""
  h, w = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  scale = tf.cast(size, tf.float32) / tf.minimum(h, w)
  new_h = tf.cast(tf.round(h * scale), tf.int32)
  new_w = tf.cast(tf.round(w * scale), tf.int32)
  return tf.stack([tf.maximum(new_h, size), tf.maximum(new_w, size)]), scale


def _resize(images, new_size, scale):
  """Bilinear resize, antialiased when it shrinks. Enlarging, the antialiasing (triangle)
  kernel is plain bilinear interpolation (equal to 2e-7) at about 10x the CPU time of
  `ResizeBilinear`, so that kernel is only run to shrink."""
  return tf.cond(scale < 1.0,
                 lambda: tf.image.resize(images, new_size, antialias=True),
                 lambda: tf.image.resize(images, new_size, antialias=False))


def resize_shorter_side_batch(images, size):
  """`resize_shorter_side` of a batch [B, H, W, C] of images of one size."""
  return _resize(images, *_shorter_side_size(tf.shape(images)[1], tf.shape(images)[2], size))


def random_crop_offset(shape, side, seed):
  """The (row, column) `tf.image.stateless_random_crop` picks for a side x side crop of an
  image of `shape` [H, W, C] with `seed`: the same draw, without the crop."""
  limit = tf.stack([shape[0] - side + 1, shape[1] - side + 1, 1])
  offset = tf.random.stateless_uniform([3], seed=seed, maxval=tf.int32.max,
                                       dtype=tf.int32) % limit
  return offset[:2]


def random_flip_coin(seed):
  """Whether `tf.image.stateless_random_flip_left_right` flips with `seed` (same draw)."""
  return tf.random.stateless_uniform([], seed=seed, minval=0, maxval=1.0) < 0.5


def random_square_crop(image, side, seed):
  """A side x side crop at a stateless-random position."""
  return tf.image.stateless_random_crop(image, tf.stack([side, side, tf.shape(image)[-1]]), seed)


def center_crop(image, side):
  shape = tf.shape(image)
  top = (shape[0] - side) // 2
  left = (shape[1] - side) // 2
  return image[top:top + side, left:left + side]


def center_crop_batch(images, side):
  """The central side x side crop of a batch [B, H, W, C] of images of one size."""
  shape = tf.shape(images)
  top = (shape[1] - side) // 2
  left = (shape[2] - side) // 2
  return images[:, top:top + side, left:left + side]


def center_crop_resize(image, resize, size):
  """Evaluation view: shorter side to `resize`, then the central `size` x `size` crop."""
  image = resize_shorter_side(image, resize)
  return tf.ensure_shape(center_crop(image, size), [size, size, 3])


def split_seed(seed, num):
  """`num` independent stateless seeds from one [2] seed."""
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num))
