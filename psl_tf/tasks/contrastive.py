"""What SimCLR and MoCo v2 share: two views per image under the ladder T1 ⊂ T2 ⊂ T3 of
`psl_tf.data.augment`, the augmentation options (flags `--contrastive_<option>`), a 2-layer
MLP projection head, and a pretext accuracy that is not a class index."""

import dataclasses

import keras
import tensorflow as tf

from psl_tf import options as options_lib
from psl_tf.data import augment
from psl_tf.tasks import base
from psl_tf.tasks import contrastive_aug

# The contrastive options that are fields of `augment.AugmentOptions`.
AUGMENT_OPTIONS = ("crop_min_scale", "color_strength", "color_prob", "gray_prob", "blur_prob",
                   "sobel_prob")


@dataclasses.dataclass(frozen=True)
class ContrastiveOptions:
  """Options of both contrastive tasks; each task's own options subclass this."""
  flag_prefix = "contrastive"
  crop_min_scale: float = options_lib.option(
      0.08, "Smallest random-resized-crop area fraction (SimCLR 0.08, MoCo v2 0.2).",
      range=(0.0, 1.0, True))
  color_strength: float = options_lib.option(
      1.0, "Colour jitter strength s of T2/T3 (SimCLR ImageNet 1.0, CIFAR and MoCo v2 0.5).",
      range=(0.0, 10.0))
  color_prob: float = options_lib.option(0.8, "Probability of the colour jitter (T2/T3).",
                                        range=(0.0, 1.0))
  gray_prob: float = options_lib.option(0.2, "Probability of grayscale (T2/T3).",
                                       range=(0.0, 1.0))
  blur_prob: float = options_lib.option(0.5, "Probability of the Gaussian blur (T3).",
                                       range=(0.0, 1.0))
  sobel_prob: float = options_lib.option(0.2, "Probability of replacing a view by its Sobel "
                                        "edge map (T3).", range=(0.0, 1.0))
  proj_dim: int = options_lib.option(128, "Output width of the projection head.",
                                    range=(1, 65536))


def augment_options(options):
  """`augment.AugmentOptions` from a task's contrastive options."""
  return augment.AugmentOptions(**{k: getattr(options, k) for k in AUGMENT_OPTIONS})


def build_projection_head(feature_shape, hidden, out_dim, name, grid=1):
  """GAP -> Dense(hidden, no bias) -> BN -> ReLU -> Dense(out_dim): SimCLR's 2-layer MLP.

  `hidden` 0 means the width of the features (their channel count); `grid` > 1 pools to a
  grid x grid map of cells instead of globally (`--head_grid`).
  """
  inputs = keras.Input(tuple(feature_shape))
  x = base.GridPooling(grid, name="pool")(inputs)
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


class ContrastiveTask(base.Task):
  """Base of the contrastive ladders: level k draws two views of each image under T_k.

  Subclasses set `Options` (a subclass of `ContrastiveOptions`) and implement `forward`,
  `loss`, `accuracy` and `chance`; the head is the projection MLP to `proj_dim`.
  """

  num_levels = augment.NUM_LEVELS
  Options = ContrastiveOptions

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, options=None, head_grid=1,
               **overrides):
    super().__init__(image_spec, head_hidden, options, head_grid, **overrides)
    self.proj_dim = self.options.proj_dim
    self.augment_options = augment_options(self.options)

  def describe_level(self, level):
    return describe_augmentations(level)

  def level_summary(self, level):
    return {"augmentations": augment.level_ops(level),
            "augment_options": dataclasses.asdict(self.augment_options)}

  def example_fn(self, level, training):
    del training  # both views are random in training and in the held-out pretext loss
    return two_view_example_fn(level, self.image_spec.size, self.augment_options)

  def batch_fn(self, level, training):
    """`example_fn` over a batch held in memory, equal to float rounding (`contrastive_aug`)."""
    del training
    return contrastive_aug.two_view_batch_fn(level, self.image_spec.size, self.augment_options)

  def output_width(self, level):
    del level
    return self.proj_dim

  def build_head(self, feature_shape, level):
    return build_projection_head(feature_shape, self.head_hidden, self.proj_dim,
                                 f"head_{self.name}_l{level}", grid=self.head_grid)
