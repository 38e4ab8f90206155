"""Multi-level SimCLR (paper 3.3.3 and 4.1): NT-Xent on two views under T1 ⊂ T2 ⊂ T3.

Level k augments each image twice with the set T_k of `psl_tf.data.augment` (T1 crop + flip,
T2 + colour distortion, T3 + blur and Sobel). Per stage the head is SimCLR's projection: global
average pool, Dense(hidden) - BatchNorm - ReLU - Dense(128), and the loss is NT-Xent with
negatives from every replica (`psl_tf.losses.nt_xent`).

Design decisions (documented in the README):

* **One batch of 2N.** The two views go through the backbone as one batch (views A then B),
  so BatchNorm sees both, as in SimCLR. BatchNorm statistics are per replica unless
  `--sync_bn` is set (SimCLR uses global BN on TPUs).
* **Hidden width.** `--head_hidden` is the MLP's hidden width; 0 means "as wide as the
  stage's output features" (SimCLR's choice, 2048 on ResNet-50's B5), since the head must
  stay a 2-layer MLP.
* **Learning rate.** With ``lr_scaling="linear"`` (default) `--learning_rate` is the rate
  per 256 images and a stage runs at lr x batch / 256 (SimCLR: 0.3 x batch / 256);
  ``"sqrt"`` gives lr x sqrt(batch) (SimCLR's option for small batches), ``"none"`` uses the
  flag as given.
"""

import dataclasses
import math

import keras
import tensorflow as tf

from psl_tf.data import augment
from psl_tf import losses
from psl_tf.tasks import base

LR_SCALINGS = ("linear", "sqrt", "none")

# Task options shared by both contrastive tasks (flags `--contrastive_<option>`).
AUGMENT_OPTIONS = ("crop_min_scale", "color_strength", "color_prob", "gray_prob", "blur_prob",
                   "sobel_prob")


def augment_options(**kwargs):
  """`AugmentOptions` from the task options that name its fields."""
  return augment.AugmentOptions(**{k: v for k, v in kwargs.items() if v is not None})


def build_projection_head(feature_shape, hidden, out_dim, name):
  """GAP -> Dense(hidden, no bias) -> BN -> ReLU -> Dense(out_dim): SimCLR's 2-layer MLP.

  `hidden` 0 means the width of the features (their channel count).
  """
  inputs = keras.Input(tuple(feature_shape))
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  width = int(hidden) or int(feature_shape[-1])
  x = keras.layers.Dense(width, use_bias=False)(x)
  x = keras.layers.BatchNormalization(momentum=0.9)(x)
  x = keras.layers.ReLU()(x)
  # float32 projections under a mixed-precision policy: NT-Xent's similarities need them.
  outputs = keras.layers.Dense(int(out_dim), name="projection", dtype="float32")(x)
  return keras.Model(inputs, outputs, name=name)


def two_view_example_fn(level, size, options):
  """Per-example map `(image, label, seed) -> (views float32 [2, size, size, 3], 0)`."""
  augment.level_ops(level)

  def fn(image, label, seed):
    del label  # self-supervised: the target is implicit in the pairing
    return augment.two_views(image, level, size, seed, options), tf.constant(0, tf.int32)
  return fn


def describe_augmentations(level):
  return f"T{level} = {{{', '.join(augment.level_ops(level))}}}"


class SimCLRTask(base.Task):
  """Two views per image; positive pairs are the two views, negatives every other view."""

  name = "simclr"
  num_levels = augment.NUM_LEVELS
  option_prefixes = ("contrastive", "simclr")

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, temperature=0.1,
               proj_dim=128, lr_scaling="linear", **augment_kwargs):
    super().__init__(image_spec, head_hidden)
    unknown = set(augment_kwargs) - set(AUGMENT_OPTIONS)
    if unknown:
      raise ValueError(f"simclr got unknown options {sorted(unknown)}")
    if temperature <= 0:
      raise ValueError(f"--simclr_temperature must be positive, got {temperature}")
    if proj_dim < 1:
      raise ValueError(f"--contrastive_proj_dim must be positive, got {proj_dim}")
    if lr_scaling not in LR_SCALINGS:
      raise ValueError(f"--simclr_lr_scaling must be one of {LR_SCALINGS}, got {lr_scaling!r}")
    self.temperature = float(temperature)
    self.proj_dim = int(proj_dim)
    self.lr_scaling = lr_scaling
    self.augment_options = augment_options(**augment_kwargs)

  def learning_rate(self, base_lr, global_batch_size):
    if self.lr_scaling == "linear":
      return base_lr * global_batch_size / 256.0
    if self.lr_scaling == "sqrt":
      return base_lr * math.sqrt(global_batch_size)
    return base_lr

  def describe_level(self, level):
    self.check_level(level)
    return describe_augmentations(level)

  def level_summary(self, level):
    self.check_level(level)
    return {"augmentations": augment.level_ops(level),
            "augment_options": dataclasses.asdict(self.augment_options),
            "temperature": self.temperature}

  def example_fn(self, level, training):
    del training  # both views are random in training and evaluation of the pretext loss
    self.check_level(level)
    return two_view_example_fn(level, self.image_spec.size, self.augment_options)

  def num_classes(self, level):
    return self.proj_dim

  def chance(self, level, batch_size):
    """Each view picks its partner among the other 2N - 1 views of the batch."""
    del level
    return 1.0 / max(1, 2 * batch_size - 1)

  def build_head(self, feature_shape, level):
    return build_projection_head(feature_shape, self.head_hidden, self.proj_dim,
                                 f"head_{self.name}_l{level}")

  def forward(self, ctx, inputs, training):
    """[N, 2, S, S, 3] -> projections [N, 2, proj_dim] (views A and B of each image)."""
    views = tf.concat([inputs[:, 0], inputs[:, 1]], axis=0)  # one batch of 2N
    z = ctx.head(ctx.features(views, training), training=training)
    z_a, z_b = tf.split(z, 2, axis=0)
    return tf.stack([z_a, z_b], axis=1)

  def loss(self, targets, outputs):
    del targets
    return losses.nt_xent(outputs[:, 0], outputs[:, 1], self.temperature)

  def accuracy(self, targets, outputs):
    del targets
    return losses.contrastive_accuracy(outputs[:, 0], outputs[:, 1])
