"""Multi-level MoCo v2 (paper 4.1): momentum key encoder and a queue of negatives, with the
augmentation ladder T1 ⊂ T2 ⊂ T3 of `psl_tf.data.augment`.

Per stage, `build_stage_state` gives the StageModel (so `tf.train.Checkpoint(model=...)`
saves and resumes them):

* ``moco_key_b<i>`` for every block i the stage trains, and ``moco_key_head``: copies of the
  query's blocks and head (same initial weights), the momentum **key encoder**. Blocks below
  the stage are frozen, so they are shared: the key view goes through the same frozen blocks
  and then the key copies. The keys are wrapped in `stop_gradient` and the key variables are
  not among `trained_variables()`, so the key encoder never gets a gradient.
* ``moco_queue`` [queue_size, proj_dim] (L2-normalised keys; random unit vectors at first)
  and ``moco_queue_ptr``: a FIFO ring buffer of negatives.

Each train step (``after_update``, after the optimizer): the key encoder moves by
``key = m * key + (1 - m) * query`` over the trainable parameters (m = 0.999; BatchNorm
moving statistics of the key encoder follow its own forward passes, as in MoCo), then the
step's keys - gathered from every replica under a strategy - overwrite the oldest queue rows.

Loss: InfoNCE with temperature 0.2 over [positive key, queue], the query's view A against the
key view B. Not implemented: MoCo's shuffle BN across GPUs; the key encoder normalises each
replica's key batch with its own statistics.
"""

import dataclasses
import threading

import keras
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import losses
from psl_tf.models import blocks as blocks_lib
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
  query_models = [ctx.blocks[i - 1] for i in key_block_ids(ctx)] + [ctx.head]
  key_models = key_blocks(ctx) + [ctx.moco_key_head]
  pairs = []
  for query_model, key_model in zip(query_models, key_models):
    for q, k in zip(query_model.weights, key_model.weights):
      if q.trainable:
        pairs.append((k, q))
  return pairs


def key_block_ids(ctx):
  """Blocks with a key copy: those the stage trains (the frozen ones below are shared)."""
  return list(range(ctx.stage.grad_first, ctx.stage.last + 1))


def key_blocks(ctx):
  return [getattr(ctx, f"moco_key_b{i}") for i in key_block_ids(ctx)]


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


class MoCoV2Task(contrastive.ContrastiveTask):
  """Query view A against its key view B and a queue of earlier keys."""

  name = "mocov2"

  # Demo defaults: a queue smaller than one epoch of the 1,000 demo images (a longer one would
  # hold stale keys of the very images it should tell apart) and a key encoder fast enough for
  # a few hundred steps; the paper-scale values (65,536 and 0.999) are in the flagfiles.
  @dataclasses.dataclass(frozen=True)
  class Options(contrastive.ContrastiveOptions):
    flag_prefix = "mocov2"
    temperature: float = config_lib.option(0.2, "MoCo v2: InfoNCE temperature.",
                                           range=(0.0, 100.0, True))
    queue_size: int = config_lib.option(512, "MoCo v2: negatives in the queue (MoCo v2 on "
                                        "ImageNet: 65536).", range=(1, 10**8))
    key_momentum: float = config_lib.option(0.99, "MoCo v2: EMA momentum m of the key encoder "
                                            "(MoCo v2 on ImageNet: 0.999).", range=(0.0, 1.0))

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, options=None, **overrides):
    super().__init__(image_spec, head_hidden, options, **overrides)
    self.temperature = self.options.temperature
    self.queue_size = self.options.queue_size
    self.key_momentum = self.options.key_momentum
    # Keys of the step being traced, per thread: MirroredStrategy traces each replica's step
    # in its own thread, and forward and after_update of one replica share it.
    self._pending = threading.local()

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
    """Key encoder (copies of the stage's blocks and head) and the queue, on `ctx`."""
    for i in key_block_ids(ctx):
      setattr(ctx, f"moco_key_b{i}", _clone(ctx.blocks[i - 1], f"moco_key_b{i}"))
    ctx.moco_key_head = _clone(ctx.head, "moco_key_head")
    initial = tf.math.l2_normalize(
        tf.random.stateless_normal([self.queue_size, self.proj_dim], seed=[0, 1]), axis=1)
    ctx.moco_queue = tf.Variable(initial, trainable=False, name="moco_queue")
    ctx.moco_queue_ptr = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                     name="moco_queue_ptr")

  def key_encode(self, ctx, views, training):
    """Keys of `views`: shared frozen blocks, key blocks, key head; no gradient."""
    first = ctx.stage.grad_first
    x = views
    if first > 1:
      frozen_training = training and ctx.frozen_bn == "batch_stats"
      x = blocks_lib.run_blocks(ctx.blocks, x, 1, first - 1, training=frozen_training)
    for block in key_blocks(ctx):
      x = block(x, training=training)
    k = ctx.moco_key_head(x, training=training)
    return tf.stop_gradient(tf.math.l2_normalize(tf.cast(k, tf.float32), axis=1))

  def forward(self, ctx, inputs, training):
    """[N, 2, S, S, 3] -> logits [N, 1 + queue_size]; column 0 is the positive key."""
    q = ctx.head(ctx.features(inputs[:, 0], training), training=training)
    q = tf.math.l2_normalize(tf.cast(q, tf.float32), axis=1)
    k = self.key_encode(ctx, inputs[:, 1], training)
    positive = tf.reduce_sum(q * k, axis=1, keepdims=True)
    negatives = tf.matmul(q, tf.stop_gradient(tf.convert_to_tensor(ctx.moco_queue)),
                          transpose_b=True)
    if training:
      # after_update (same train step, same trace, same replica thread) enqueues these keys.
      self._pending.keys = k
    return tf.concat([positive, negatives], axis=1) / self.temperature

  def after_update(self, ctx):
    """EMA of the key encoder, then FIFO enqueue of this step's keys from every replica."""
    keys = getattr(self._pending, "keys", None)
    if keys is None:
      raise ValueError("mocov2: after_update needs a training forward pass first")
    self._pending.keys = None
    m = self.key_momentum
    update_synced([(k, lambda var, value: var.assign(m * var + (1.0 - m) * value),
                    (keras.ops.convert_to_tensor(q),))
                   for k, q in ema_pairs(ctx)])
    all_keys, _ = losses.replica_gather(keys)
    enqueue(ctx.moco_queue, ctx.moco_queue_ptr, all_keys)

  # ---- objective ------------------------------------------------------------------------
  def loss(self, targets, outputs):
    del targets
    labels = tf.zeros([tf.shape(outputs)[0]], tf.int32)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs))

  def accuracy(self, targets, outputs):
    del targets
    return tf.cast(tf.equal(tf.argmax(outputs, axis=1, output_type=tf.int32), 0), tf.float32)
