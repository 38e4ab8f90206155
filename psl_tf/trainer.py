"""The stage-wise model: one stage of a partitioned backbone plus its task head.

`StageModel` is a `keras.Model` with a custom `train_step`. In stage i it

* runs the blocks below the stage in inference mode (or with batch statistics, if asked),
* cuts the graph at the stage input with `stop_gradient` (not in `psl_f`),
* runs the stage's blocks in training mode and the head g_i on the last block's output,
* takes gradients only over the stage's blocks and g_i, and never computes the blocks above.
"""

import keras
import tensorflow as tf

from psl_tf import distribute
from psl_tf import keras_private
from psl_tf import optim
from psl_tf import precision
from psl_tf.models import blocks as blocks_lib

FROZEN_BN_MODES = ("inference", "batch_stats")


def build_stage_head(backbone, task, stage):
  """The task's head g_i for `stage`: the stage's level, on the output of its last block."""
  return task.build_head(backbone.get_layer(f"b{stage.last}").output.shape[1:], stage.level)


class StageModel(keras_private.FirstReplicaSymbolicBuild, keras.Model):
  """Trains one stage of a backbone on one level of a task.

  Args:
    backbone: a backbone that follows the b1..b5 contract (`psl_tf.models`).
    task: a `psl_tf.tasks.Task`.
    stage: a `psl_tf.stages.Stage`.
    head: the stage's head (from `task.build_head`).
    weight_decay: L2 coefficient on kernels of trained variables (0 to leave it to the
      optimizer, as LARS does).
    frozen_bn: 'inference' (frozen blocks use and keep their BatchNorm moving statistics,
      the default) or 'batch_stats' (they normalise with batch statistics and keep updating
      their moving averages, like a PyTorch model left in train() mode).
  """

  def __init__(self, backbone, task, stage, head, weight_decay=1e-4, frozen_bn="inference",
               **kwargs):
    super().__init__(**kwargs)
    if frozen_bn not in FROZEN_BN_MODES:
      raise ValueError(f"frozen_bn must be one of {FROZEN_BN_MODES}, got {frozen_bn!r}")
    self.backbone = backbone
    self.blocks = blocks_lib.get_blocks(backbone)
    self.task = task
    self.stage = stage
    self.head = head
    self.weight_decay = float(weight_decay)
    self.frozen_bn = frozen_bn
    for i, block in enumerate(self.blocks, start=1):
      # Blocks outside the trained range are frozen; in 'inference' mode that also puts their
      # BatchNorm layers in inference mode (Keras 3 BN only uses batch stats when trainable).
      block.trainable = i in stage.trained_blocks or (
          frozen_bn == "batch_stats" and i < stage.grad_first)
    self.loss_tracker = keras.metrics.Mean(name="loss")
    self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
    # Mean global gradient norm: watched by psl_tf.guards.NonFiniteGuard, which stops a
    # diverging run at the first step whose loss or gradients are not finite.
    self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
    # The task's per-stage state (MoCo: key encoder and queue), tracked: checkpointed with
    # the model. None for tasks without state.
    self.task_state = task.build_stage_state(self)

  @property
  def metrics(self):
    return [self.loss_tracker, self.accuracy_tracker, self.grad_norm_tracker]

  def trained_variables(self):
    """The variables that get gradients: the stage's blocks, the head and task extras."""
    variables = []
    for i in self.stage.trained_blocks:
      variables.extend(self.blocks[i - 1].trainable_variables)
    variables.extend(self.head.trainable_variables)
    variables.extend(self.task.extra_trainable_variables(self))
    return variables

  def features(self, x, training=False, stage_blocks=None):
    """Stage features: frozen blocks, stop-gradient at the stage input, stage blocks.

    The one place the frozen-block path is written. `stage_blocks` replaces the stage's own
    blocks after the cut (MoCo's key encoder: its copies of the stage's blocks behind the
    same shared frozen blocks)."""
    first = self.stage.grad_first
    if first > 1:
      frozen_training = training and self.frozen_bn == "batch_stats"
      x = blocks_lib.run_blocks(self.blocks, x, 1, first - 1, training=frozen_training)
      x = keras.ops.stop_gradient(x)
    if stage_blocks is None:
      return blocks_lib.run_blocks(self.blocks, x, first, self.stage.last, training=training)
    for block in stage_blocks:
      x = block(x, training=training)
    return x

  def call(self, inputs, training=False, with_extras=False):
    """The task's outputs; with `with_extras`, (outputs, what `after_update` needs)."""
    if with_extras:
      return self.task.forward_with_extras(self, inputs, training)
    return self.task.forward(self, inputs, training)

  def regularization(self, variables):
    if not self.weight_decay:
      return 0.0
    return 0.5 * self.weight_decay * tf.add_n(
        [tf.reduce_sum(tf.square(v)) for v in variables if optim.is_decayed(v)])

  def train_step(self, data):
    inputs, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
    variables = self.trained_variables()
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      # Losses and metrics in float32 whatever the layers compute in (--precision).
      outputs, extras = self(inputs, training=True, with_extras=True)
      outputs = precision.to_float32(outputs)
      task_loss = self.task.loss(targets, outputs)
      total = task_loss + self.regularization(variables)
      # Gradients are summed over replicas, so each replica's mean loss is scaled once.
      scaled = total / replicas
      # Under mixed_float16 the optimizer is a LossScaleOptimizer: the loss is multiplied by
      # its dynamic scale here and `apply` divides the gradients by it (identity otherwise).
      scaled = self.optimizer.scale_loss(scaled)
    gradients = tape.gradient(scaled, variables)
    # Read before `apply`, which may change the loss scale (mixed_float16).
    grad_norm, grad_norm_weight = precision.unscaled_grad_norm(self.optimizer, gradients)
    self.optimizer.apply(gradients, variables)
    self.task.after_update(self, extras)
    # One set of BatchNorm moving statistics over all replicas (Keras 3 keeps one per replica).
    distribute.average_over_replicas(blocks_lib.moving_statistics(self))
    self.loss_tracker.update_state(task_loss)
    self.accuracy_tracker.update_state(self.task.accuracy(targets, outputs))
    self.grad_norm_tracker.update_state(grad_norm, sample_weight=grad_norm_weight)
    return _for_keras_reduce({"loss": self.loss_tracker.result(),
                              "accuracy": self.accuracy_tracker.result(),
                              "grad_norm": self.grad_norm_tracker.result()})

  def test_step(self, data):
    inputs, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
    outputs = precision.to_float32(self(inputs, training=False))
    self.loss_tracker.update_state(self.task.loss(targets, outputs))
    self.accuracy_tracker.update_state(self.task.accuracy(targets, outputs))
    return _for_keras_reduce({"loss": self.loss_tracker.result(),
                              "accuracy": self.accuracy_tracker.result()})


def _for_keras_reduce(logs):
  """`logs` in the shape Keras can reduce over the replicas of the current strategy.

  Under multi-worker training Keras 3 (3.15) averages every step output with
  `strategy.reduce("MEAN", v, axis=0)`, which fails on a scalar ("Invalid reduction dimension
  0 for input with 0 dimensions"); as one-element vectors they reduce to the scalar mean over
  replicas, the value the other strategies log.
  """
  strategy = tf.distribute.get_strategy()
  if keras_private.in_multi_worker_mode(strategy):
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}
  return logs
