"""Multi-level MoCo v2 (paper 4.1): momentum key encoder and a queue of negatives, with the
augmentation ladder T1 ⊂ T2 ⊂ T3 of `psl_tf.data.augment`.

Per stage, `build_stage_state` returns a `MoCoState` that the StageModel keeps as
`task_state` (so `tf.train.Checkpoint(model=...)` saves and resumes it):

* ``key_blocks`` (a copy of every block the stage trains) and ``key_head``: copies of the
  query's blocks and head (same initial weights), the momentum **key encoder**. Blocks below
  the stage are frozen, so they are shared: the key view takes the StageModel's own
  frozen-block path (`features(..., stage_blocks=key_blocks)`) and then the key copies. The
  keys are wrapped in `stop_gradient` and the key variables are not among
  `trained_variables()`, so the key encoder never gets a gradient.
* ``queue`` [queue_size, proj_dim] (L2-normalised keys; random unit vectors at first) and
  ``queue_ptr``: a FIFO ring buffer of negatives.

Each train step (``after_update``, after the optimizer, given the step's keys by
``forward_with_extras``): the key encoder moves by
``key = m * key + (1 - m) * query`` over the trainable parameters (m = 0.999; BatchNorm
moving statistics of the key encoder follow its own forward passes, as in MoCo), then the
step's keys - gathered from every replica under a strategy - overwrite the oldest queue rows.

Loss: InfoNCE with temperature 0.2 over [positive key, queue], the query's view A against the
key view B. Not implemented: MoCo's shuffle BN across GPUs; the key encoder normalises each
replica's key batch with its own statistics.
"""

import dataclasses

import keras
import tensorflow as tf

from psl_tf import options as options_lib
from psl_tf import losses
from psl_tf.tasks import base
from psl_tf.tasks import contrastive


def update_synced(updates):
  """Applies `fn(variable, *args)` for each `(variable, fn, args)`, in any context.

  Inside a replica context of a distribution strategy, a plain `assign` on a mirrored
  variable is refused; like Keras optimizers, the updates go through `merge_call` and
  `extended.update`, which applies each replica's value to its own copy (the values here are
  equal on every replica).
  """
  updates = [(v.value if isinstance(v, keras.Variable) else v, fn, args)
             for v, fn, args in updates]
  if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
    for variable, fn, args in updates:
      fn(variable, *args)
    return

  def merge_fn(strategy, all_args):
    for (variable, fn, _), args in zip(updates, all_args):
      strategy.extended.update(variable, fn, args=tuple(args), group=False)

  tf.distribute.get_replica_context().merge_call(
      merge_fn, args=([list(args) for _, _, args in updates],))


def ema_pairs(ctx):
  """(key variable, query variable) pairs of the trainable parameters, in matching order."""
  state = ctx.task_state
  query_models = [ctx.blocks[i - 1] for i in state.block_ids] + [ctx.head]
  key_models = list(state.key_blocks) + [state.key_head]
  pairs = []
  for query_model, key_model in zip(query_models, key_models):
    for q, k in zip(query_model.weights, key_model.weights):
      if q.trainable:
        pairs.append((k, q))
  return pairs


def enqueue(queue, ptr, keys):
  """Writes `keys` [n, D] into the ring buffer `queue` at `ptr` (FIFO) and advances it."""
  size = tf.shape(queue, out_type=tf.int64)[0]
  n = tf.shape(keys, out_type=tf.int64)[0]
  index = (ptr + tf.range(n, dtype=tf.int64)) % size
  update_synced([
      (queue, lambda var, i, k: var.scatter_nd_update(i[:, None], k), (index, keys)),
      (ptr, lambda var, value: var.assign(value), ((ptr + n) % size,)),
  ])


def _clone(model, name):
  copy = keras.models.clone_model(model)
  copy.name = name
  copy.set_weights(model.get_weights())
  return copy


class MoCoState(keras.layers.Layer):
  """MoCo's per-stage state, kept by the StageModel as `task_state` (so the epoch
  checkpoints save and restore it): the key encoder and the queue.

  Attributes:
    block_ids: the blocks with a key copy: those the stage trains (the frozen ones below are
      shared with the query).
    key_b<i>: a copy of block i for each of those (same initial weights); `key_blocks` lists
      them in order.
    key_head: a copy of the stage's head.
    queue: [queue_size, proj_dim] L2-normalised keys (random unit vectors at first).
    queue_ptr: the next row to overwrite (FIFO ring buffer).
  """

  def __init__(self, ctx, queue_size, proj_dim):
    super().__init__(name="moco_state")
    self.block_ids = list(range(ctx.stage.grad_first, ctx.stage.last + 1))
    # One attribute per copy (key_b3, key_b4, ...): attributes are what the checkpoint's
    # object graph follows (a list attribute of a Keras layer is not).
    for i in self.block_ids:
      setattr(self, f"key_b{i}", _clone(ctx.blocks[i - 1], f"moco_key_b{i}"))
    self.key_head = _clone(ctx.head, "moco_key_head")
    initial = tf.math.l2_normalize(
        tf.random.stateless_normal([queue_size, proj_dim], seed=[0, 1]), axis=1)
    self.queue = tf.Variable(initial, trainable=False, name="moco_queue")
    self.queue_ptr = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                 name="moco_queue_ptr")

  @property
  def key_blocks(self):
    """The key copies, in block order."""
    return [self.key_block(i) for i in self.block_ids]

  def key_block(self, index):
    """The key copy of block `index` (1-based, as B1..B5)."""
    return getattr(self, f"key_b{index}")


class MoCoV2Task(contrastive.ContrastiveTask):
  """Query view A against its key view B and a queue of earlier keys."""

  name = "mocov2"

  # Demo defaults: a queue smaller than one epoch of the 1,000 demo images (a longer one would
  # hold stale keys of the very images it should tell apart) and a key encoder fast enough for
  # a few hundred steps; the paper-scale values (65,536 and 0.999) are in the flagfiles.
  @dataclasses.dataclass(frozen=True)
  class Options(contrastive.ContrastiveOptions):
    flag_prefix = "mocov2"
    temperature: float = options_lib.option(0.2, "MoCo v2: InfoNCE temperature.",
                                           range=(0.0, 100.0, True))
    queue_size: int = options_lib.option(512, "MoCo v2: negatives in the queue (MoCo v2 on "
                                        "ImageNet: 65536).", range=(1, 10**8))
    key_momentum: float = options_lib.option(0.99, "MoCo v2: EMA momentum m of the key encoder "
                                            "(MoCo v2 on ImageNet: 0.999).", range=(0.0, 1.0))

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, options=None, head_grid=1,
               **overrides):
    super().__init__(image_spec, head_hidden, options, head_grid, **overrides)
    self.temperature = self.options.temperature
    self.queue_size = self.options.queue_size
    self.key_momentum = self.options.key_momentum

  @classmethod
  def from_config(cls, config):
    task = super().from_config(config)
    if task.queue_size < config.batch_size:
      raise ValueError(f"--mocov2_queue_size={task.queue_size} is smaller than the batch "
                       f"({config.batch_size}); use a queue of at least one global batch")
    return task

  def level_summary(self, level):
    return {**super().level_summary(level), "temperature": self.temperature,
            "queue_size": self.queue_size, "key_momentum": self.key_momentum}

  def chance(self, level, batch_size):
    """The positive key among itself and the queue's negatives."""
    del level, batch_size
    return 1.0 / (self.queue_size + 1)

  # ---- state ----------------------------------------------------------------------------
  def build_stage_state(self, ctx):
    """Key encoder (copies of the stage's blocks and head) and the queue."""
    return MoCoState(ctx, self.queue_size, self.proj_dim)

  def key_encode(self, ctx, views, training):
    """Keys of `views`: the shared frozen blocks, the key blocks, the key head; no gradient."""
    state = ctx.task_state
    k = state.key_head(ctx.features(views, training, stage_blocks=state.key_blocks),
                       training=training)
    return tf.stop_gradient(tf.math.l2_normalize(tf.cast(k, tf.float32), axis=1))

  def forward_with_extras(self, ctx, inputs, training):
    """[N, 2, S, S, 3] -> (logits [N, 1 + queue_size], {"keys": [N, proj_dim]}); column 0 of
    the logits is the positive key; the keys go to the queue in `after_update`."""
    q = ctx.head(ctx.features(inputs[:, 0], training), training=training)
    q = tf.math.l2_normalize(tf.cast(q, tf.float32), axis=1)
    k = self.key_encode(ctx, inputs[:, 1], training)
    positive = tf.reduce_sum(q * k, axis=1, keepdims=True)
    negatives = tf.matmul(q, tf.stop_gradient(tf.convert_to_tensor(ctx.task_state.queue)),
                          transpose_b=True)
    return tf.concat([positive, negatives], axis=1) / self.temperature, {"keys": k}

  def forward(self, ctx, inputs, training):
    return self.forward_with_extras(ctx, inputs, training)[0]

  def after_update(self, ctx, extras):
    """EMA of the key encoder, then FIFO enqueue of this step's keys from every replica."""
    m = self.key_momentum
    update_synced([(k, lambda var, value: var.assign(m * var + (1.0 - m) * value),
                    (keras.ops.convert_to_tensor(q),))
                   for k, q in ema_pairs(ctx)])
    all_keys, _ = losses.replica_gather(extras["keys"])
    enqueue(ctx.task_state.queue, ctx.task_state.queue_ptr, all_keys)

  # ---- objective ------------------------------------------------------------------------
  def loss(self, targets, outputs):
    del targets
    labels = tf.zeros([tf.shape(outputs)[0]], tf.int32)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs))

  def accuracy(self, targets, outputs):
    del targets
    return tf.cast(tf.equal(tf.argmax(outputs, axis=1, output_type=tf.int32), 0), tf.float32)
