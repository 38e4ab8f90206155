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

import tensorflow as tf

from psl_tf import options as options_lib
from psl_tf import losses
from psl_tf.tasks import base
from psl_tf.tasks import contrastive

LR_SCALINGS = ("linear", "sqrt", "none")


class SimCLRTask(contrastive.ContrastiveTask):
  """Two views per image; positive pairs are the two views, negatives every other view."""

  name = "simclr"

  @dataclasses.dataclass(frozen=True)
  class Options(contrastive.ContrastiveOptions):
    flag_prefix = "simclr"
    temperature: float = options_lib.option(0.1, "SimCLR: NT-Xent temperature.",
                                           range=(0.0, 100.0, True))
    lr_scaling: str = options_lib.option(
        "linear", "SimCLR: stage learning rate from --learning_rate: linear = lr x batch / 256 "
        "(lr 0.3 gives SimCLR's 0.3 x batch / 256), sqrt = lr x sqrt(batch), none = as given.",
        choices=LR_SCALINGS)

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, options=None, head_grid=1,
               **overrides):
    super().__init__(image_spec, head_hidden, options, head_grid, **overrides)
    self.temperature = self.options.temperature
    self.lr_scaling = self.options.lr_scaling

  def learning_rate(self, base_lr, global_batch_size):
    if self.lr_scaling == "linear":
      return base_lr * global_batch_size / 256.0
    if self.lr_scaling == "sqrt":
      return base_lr * math.sqrt(global_batch_size)
    return base_lr

  def level_summary(self, level):
    return {**super().level_summary(level), "temperature": self.temperature}

  def chance(self, level, batch_size):
    """Each view picks its partner among the other 2N - 1 views of the batch."""
    del level
    return 1.0 / max(1, 2 * batch_size - 1)

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
