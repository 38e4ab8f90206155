"""The small interface every pretext-task ladder implements.

A task turns one pretext task G into levels G_1 ⊂ G_2 ⊂ ... of rising difficulty. The
trainer asks it for four things per stage:

* ``example_fn(level, training)``: a per-example `tf.data` map
  ``(image_uint8[H, W, 3], label, seed[2]) -> (inputs, targets)``. All randomness comes from
  stateless ops on ``seed``, so the same seed gives the same example eagerly and inside
  `tf.data` (tests check this for every task).
* ``build_head(feature_shape, level)``: the stage's head g_i (discarded after training).
* ``forward(ctx, inputs, training)``: the stage's outputs; ``ctx.features(x, training)`` runs
  the backbone blocks of the active stage (stop-gradient included) and ``ctx.head`` is g_i.
* ``loss(targets, outputs)`` (mean over the local batch) and ``accuracy(targets, outputs)``
  (per-example 0/1, the pretext accuracy that `summary.json` reports).

Tasks with state across steps (MoCo's key encoder and queue) also override
``build_stage_state`` (variables created there on ``ctx``, the StageModel, are checkpointed
with it) and ``after_update``; ``write_artifacts(workdir)`` saves task files with the run.
"""

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """Image geometry a task's pipeline produces.

  Attributes:
    size: side of the square image the backbone sees.
    resize: shorter side the source image is resized to before cropping.
  """
  size: int = 224
  resize: int = 256


class Task:
  """Base class; subclasses set `name`, `num_levels` and implement the abstract methods."""

  name = "task"
  num_levels = 3

  # Flags named `<prefix>_<option>` are passed to the constructor as `option=`.
  option_prefixes = ()

  def __init__(self, image_spec=ImageSpec(), head_hidden=512):
    self.image_spec = image_spec
    self.head_hidden = head_hidden

  @classmethod
  def from_config(cls, config):
    """Builds the task from a `psl_tf.config.Config` (task options in `task_options`)."""
    return cls(image_spec=ImageSpec(config.image_size, config.resize_to),
               head_hidden=config.head_hidden, **config.task_options)

  # ---- description -------------------------------------------------------------------
  def describe_level(self, level):
    """A short human-readable description of a level, for the stage header."""
    return f"level {level}"

  def level_summary(self, level):
    """Extra facts about a level for `summary.json` (JSON-serialisable dict)."""
    return {}

  def learning_rate(self, base_lr, global_batch_size):
    """The peak learning rate of a stage from `--learning_rate`. Default: unchanged."""
    del global_batch_size
    return base_lr

  def check_level(self, level):
    if not 1 <= level <= self.num_levels:
      raise ValueError(f"task {self.name} has levels 1..{self.num_levels}, got {level}")

  # ---- data --------------------------------------------------------------------------
  def example_fn(self, level, training):
    raise NotImplementedError

  def batch_fn(self, level, training):
    """Optional batched form of `example_fn`, for sources held in memory (equal image sizes):
    ``(images uint8 [B, H, W, 3], labels [B], seeds [B, 2]) -> (inputs, targets)`` that
    equals stacking ``example_fn`` over the rows (to float rounding; tests check it), with
    the heavy image ops run once per batch instead of once per image. None: no batched form
    (the pipeline maps `example_fn`)."""
    del level, training
    return None

  def chance(self, level, batch_size):
    """Pretext accuracy of guessing, for the logs. Default: one class of `num_classes`."""
    del batch_size
    return 1.0 / self.num_classes(level)

  # ---- model -------------------------------------------------------------------------
  def num_classes(self, level):
    raise NotImplementedError

  def build_head(self, feature_shape, level):
    """Default head: global average pool, optional hidden layer, linear classifier."""
    inputs = keras.Input(tuple(feature_shape))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    if self.head_hidden:
      x = keras.layers.Dense(self.head_hidden, use_bias=False)(x)
      x = keras.layers.BatchNormalization(momentum=0.9)(x)
      x = keras.layers.ReLU()(x)
    # float32 logits under a mixed-precision policy (softmax and loss stay float32).
    logits = keras.layers.Dense(self.num_classes(level), name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=f"head_{self.name}_l{level}")

  def build_stage_state(self, ctx):
    """Creates per-stage state (variables) the task needs beyond the head. Default: none."""
    del ctx

  def forward(self, ctx, inputs, training):
    return ctx.head(ctx.features(inputs, training), training=training)

  def after_update(self, ctx):
    """Called inside the train step after the optimizer update (e.g. EMA updates)."""
    del ctx

  def extra_trainable_variables(self, ctx):
    """Variables beyond the stage's blocks and head that get gradients. Default: none."""
    del ctx
    return []

  def write_artifacts(self, workdir):
    """Writes files the run's work directory should keep (e.g. jigsaw permutations)."""
    del workdir

  # ---- objective ---------------------------------------------------------------------
  def loss(self, targets, outputs):
    """Mean over the local batch; the trainer divides by the replica count once."""
    per_example = keras.losses.sparse_categorical_crossentropy(targets, outputs, from_logits=True)
    return tf.reduce_mean(per_example)

  def accuracy(self, targets, outputs):
    """Per-example correctness as float32 (shape [local batch])."""
    predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(targets, tf.int32)), tf.float32)


# ---- image helpers shared by the task pipelines ----------------------------------------

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


def center_crop_resize(image, resize, size):
  """Evaluation view: shorter side to `resize`, then the central `size` x `size` crop."""
  image = resize_shorter_side(image, resize)
  return tf.ensure_shape(center_crop(image, size), [size, size, 3])


def split_seed(seed, num):
  """`num` independent stateless seeds from one [2] seed."""
  return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num))
