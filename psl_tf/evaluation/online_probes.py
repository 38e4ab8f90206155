"""Online linear probes during pre-training (beyond the paper), as a Keras callback.

When the pre-training data has class labels, a stop-gradient linear probe per computed block
(B1 up to the stage's last block) is trained alongside the pretext task: after every training
step the callback takes one SGD step of its own on a labelled batch (random crop + flip) drawn
from its own pipeline. The backbone runs in inference mode under `stop_gradient`, so the
probes never change it nor its BatchNorm statistics. Probes use global average pooling (one
value per channel), cheaper than the ~9,000-value pooling of `psl_tf.evaluation.probes`; they are a
monitor, not the paper's protocol.

At the end of every epoch the callback adds ``probe_b<k>`` (running training top-1 of the
epoch, in [0, 1]) and, with an evaluation source, ``val_probe_b<k>`` (top-1 on up to
`eval_batches` centre-cropped batches) to the epoch logs (so Keras history sees them), and
writes them to TensorBoard under `logdir`.

One callback can serve every stage of a run: at the start of each `fit` it reads the stage
from the model it drives (`StageModel.stage`) and starts fresh probes on b1..b<last block>.
"""

import keras
import tensorflow as tf

from psl_tf.data import views
from psl_tf.models import blocks as blocks_lib


class OnlineProbes(keras.callbacks.Callback):
  """Trains and reports stop-gradient linear probes on every computed block.

  Args:
    backbone: the backbone being pre-trained (b1..b5 contract); None: taken from
      `model.backbone` when training begins (a `StageModel`).
    last_block: the highest block the stage computes (1..5); probes go on b1..b<last_block>.
      None: taken from `model.stage.last` when training begins (a `StageModel`).
    train_source: a labelled `psl_tf.data.Source` (integer labels in [0, num_classes)).
    num_classes: number of classes.
    image_size, resize: geometry of the probe views.
    batch_size: probe batch size.
    eval_source: optional labelled source to report held-out accuracy on.
    eval_batches: at most this many evaluation batches per epoch.
    learning_rate, momentum: the probes' SGD.
    logdir: TensorBoard directory (None: no TensorBoard).
    seed: seed of the probe pipeline.
  """

  def __init__(self, backbone, last_block, train_source, num_classes, image_size, resize,
               batch_size=64, eval_source=None, eval_batches=10, learning_rate=0.1,
               momentum=0.9, logdir=None, seed=0):
    super().__init__()
    if last_block is not None and not 1 <= last_block <= len(blocks_lib.BLOCK_NAMES):
      raise ValueError(f"last_block must be in 1..5, got {last_block}")
    if not num_classes or num_classes < 2:
      raise ValueError("online probes need a labelled data set (at least 2 classes)")
    if last_block is not None and backbone is None:
      raise ValueError("online probes with a fixed last_block need the backbone")
    self.blocks = blocks_lib.get_blocks(backbone) if backbone is not None else None
    self.num_classes = num_classes
    self.train_data = iter(views.labelled_dataset(train_source, image_size, resize, batch_size,
                                                  training=True, seed=seed + 7919))
    self.eval_source = eval_source
    self.eval_batches = eval_batches
    self.image_size, self.resize, self.batch_size = image_size, resize, batch_size
    self.learning_rate, self.momentum = learning_rate, momentum
    self.logdir = logdir
    self.writer = None
    self.stage_index = None
    self.history = []
    if last_block is not None:
      self.start(last_block)

  def start(self, last_block, stage_index=None):
    """Fresh probes (heads, optimizer, metrics) on b1..b<last_block>."""
    self.last_block = last_block
    self.stage_index = stage_index
    self.names = list(blocks_lib.BLOCK_NAMES[:last_block])
    self.heads = {}
    for name, block in zip(self.names, self.blocks):
      self.heads[name] = keras.Sequential([
          keras.Input((block.output.shape[-1],)),
          # float32 probes whatever the backbone computes in (--precision): no loss scaling.
          keras.layers.BatchNormalization(center=False, scale=False, dtype="float32"),
          keras.layers.Dense(self.num_classes, dtype="float32")], name=f"online_probe_{name}")
    self.optimizer = keras.optimizers.SGD(self.learning_rate, momentum=self.momentum)
    self.optimizer.build([v for h in self.heads.values() for v in h.trainable_variables])
    self.correct = {n: keras.metrics.Mean() for n in self.names}
    # New variables: trace the step functions again.
    self._step = tf.function(self._step_fn)
    self._predict = tf.function(self._predict_fn)
    if self.logdir:
      sub = self.logdir if stage_index is None else f"{self.logdir}/stage_{stage_index}"
      self.writer = tf.summary.create_file_writer(sub)

  def on_train_begin(self, logs=None):
    if self.blocks is None:
      self.blocks = blocks_lib.get_blocks(self.model.backbone)
    stage = getattr(self.model, "stage", None)
    if stage is not None and stage.index != self.stage_index:
      self.start(stage.last, stage.index)

  def _pooled(self, images):
    x, pooled = images, {}
    for name, block in zip(self.names, self.blocks):
      x = keras.ops.stop_gradient(block(x, training=False))
      pooled[name] = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])
    return pooled

  def _step_fn(self, images, labels):
    pooled = self._pooled(images)
    variables = [v for h in self.heads.values() for v in h.trainable_variables]
    with tf.GradientTape() as tape:
      logits = {n: self.heads[n](pooled[n], training=True) for n in self.names}
      loss = tf.add_n([tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          labels, logits[n], from_logits=True)) for n in self.names])
    self.optimizer.apply(tape.gradient(loss, variables), variables)
    return {n: tf.cast(tf.equal(tf.argmax(logits[n], -1), tf.cast(labels, tf.int64)),
                       tf.float32) for n in self.names}

  def _predict_fn(self, images):
    pooled = self._pooled(images)
    return {n: tf.argmax(self.heads[n](pooled[n], training=False), -1) for n in self.names}

  def train_step(self):
    """One probe SGD step on the next labelled batch (also called by tests)."""
    images, labels = next(self.train_data)
    for name, hits in self._step(images, labels).items():
      self.correct[name].update_state(hits)

  def evaluate(self):
    """{block: top-1 in [0, 1]} on up to `eval_batches` batches of the evaluation source."""
    data = views.labelled_dataset(self.eval_source, self.image_size, self.resize,
                                  self.batch_size, training=False).take(self.eval_batches)
    hits = {n: keras.metrics.Mean() for n in self.names}
    for images, labels in data:
      for name, predicted in self._predict(images).items():
        hits[name].update_state(tf.cast(tf.equal(predicted, tf.cast(labels, tf.int64)),
                                        tf.float32))
    return {n: float(m.result()) for n, m in hits.items()}

  def on_train_batch_end(self, batch, logs=None):
    self.train_step()

  def on_epoch_end(self, epoch, logs=None):
    values = {f"probe_{n}": float(self.correct[n].result()) for n in self.names}
    if self.eval_source is not None:
      values.update({f"val_probe_{n}": v for n, v in self.evaluate().items()})
    for metric in self.correct.values():
      metric.reset_state()
    if logs is not None:
      logs.update(values)
    self.history.append({"stage": self.stage_index, "epoch": epoch + 1, **values})
    if self.writer is not None:
      with self.writer.as_default():
        for key, value in values.items():
          tf.summary.scalar(key, value, step=epoch + 1)
      self.writer.flush()


def for_run(train_source, dataset, data_dir, image_size, resize, batch_size, logdir, seed=0,
            image_check="full"):
  """The callback for a pre-training run on `train_source`, evaluated on the data set's test
  (or validation) split when it has one; ValueError if the data has no class labels."""
  from psl_tf import data  # pylint: disable=g-import-not-at-top  (only this helper needs it)
  if not train_source.num_classes or train_source.num_classes < 2:
    raise ValueError(f"--online_probes needs class labels, and {dataset} has none (use "
                     "class sub-folders for folder:PATH, or drop --online_probes)")
  eval_source = None
  for split in ("test", "validation"):
    try:
      eval_source = data.load_source(dataset, split, data_dir, image_check)
      break
    except ValueError:
      continue
  return OnlineProbes(None, None, train_source, train_source.num_classes, image_size, resize,
                      batch_size, eval_source=eval_source, logdir=logdir, seed=seed)


def merge_history(summary, history):
  """`summary` with `history` (list of per-epoch dicts) under 'online_probes'; entries of the
  same (stage, epoch) from an earlier, resumed session are replaced."""
  fresh = {(h["stage"], h["epoch"]) for h in history}
  kept = [h for h in summary.get("online_probes", []) if (h["stage"], h["epoch"]) not in fresh]
  merged = sorted(kept + list(history), key=lambda h: (h["stage"] or 0, h["epoch"]))
  return {**summary, "online_probes": merged}
