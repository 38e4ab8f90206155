"""The labelled image views of evaluation: random crop + flip to train, centre crop to test.

Both are per-example `tf.data` maps with the signature `psl_tf.data.make_input_fn` expects,
``(image uint8 [H, W, 3], label, seed [2]) -> (float image [size, size, 3] in [0, 1], label)``;
the label passes through untouched (class index or multi-hot vector).
"""

import tensorflow as tf

from psl_tf import data
from psl_tf.data import images as image_lib


def train_view_fn(size, resize):
  """Shorter side to `resize`, a random `size` crop, a random horizontal flip (stateless)."""
  def fn(image, label, seed):
    crop_seed, flip_seed = image_lib.split_seed(seed, 2)
    image = image_lib.resize_shorter_side(image_lib.to_float(image), resize)
    image = image_lib.random_square_crop(image, size, crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.ensure_shape(image, [size, size, 3]), label
  return fn


def eval_view_fn(size, resize):
  """Shorter side to `resize`, then the central `size` x `size` crop."""
  def fn(image, label, seed):
    del seed
    return image_lib.center_crop_resize(image_lib.to_float(image), resize, size), label
  return fn


def labelled_dataset(source, size, resize, batch_size, training, seed=0, shuffle_buffer=10_000):
  """Batches of (image, label) from a `psl_tf.data.Source`.

  Training data is shuffled, augmented and repeated forever (count steps); evaluation data is
  centre-cropped, in source order, one pass, last batch kept.
  """
  view = train_view_fn(size, resize) if training else eval_view_fn(size, resize)
  return data.make_input_fn(source, view, batch_size, seed=seed, training=training,
                            shuffle_buffer=shuffle_buffer)(None)
