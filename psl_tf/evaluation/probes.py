"""Linear probes on the frozen blocks B1..B5, all trained at once (Goyal et al. 2019).

One pass through the frozen backbone feeds one head per block: the block's map is
average-pooled to about 9,000 values (`psl_tf.evaluation.pooling`), normalised by a BatchNorm without
scale and shift, and classified by one linear layer. Every head gets its own loss; the sum is
minimised by SGD with momentum, a step schedule and L2 weight decay on the linear kernels.
The backbone runs in inference mode and is not trainable, so its weights (BatchNorm moving
statistics included) are left exactly as they were.

Two ways to feed the heads:

* **images** (`linear_probe`): every step runs the backbone on a fresh augmented batch
  (random crop + flip), as Goyal et al. do;
* **stored features** (`linear_probe_on_features`): one compiled pass through the frozen
  backbone extracts every block's pooled features of every training and test image once
  (centre view, float16 in memory), and the heads are trained on those arrays. No
  augmentation then, but an epoch costs a few matrix products instead of a backbone pass,
  so the heads can be trained on the whole training split until they plateau.
"""

import math
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from psl_tf import guards
from psl_tf.evaluation import metrics as metrics_lib
from psl_tf import optim
from psl_tf.evaluation import pooling
from psl_tf.models import blocks as blocks_lib


class FeatureNorm(keras.layers.BatchNormalization):
  """The heads' BatchNorm without scale and shift, over [N, C] vectors.

  The same layer as ``keras.layers.BatchNormalization(center=False, scale=False)`` (same
  variables, defaults, inference path and moving-statistics update), but in training the
  normalisation and its gradient run through TensorFlow's fused kernel on an [N, 1, 1, C] view
  instead of two column reductions over [N, C]: about 2.3x faster forward and backward at the
  probes' C = 32k on CPU, equal to float rounding (`tests/probes_test.py`)."""

  def __init__(self, **kwargs):
    super().__init__(center=False, scale=False, **kwargs)

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable) or mask is not None or len(inputs.shape) != 2:
      return super().call(inputs, training=training, mask=mask)
    x = tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    ones, zeros = tf.ones([channels]), tf.zeros([channels])
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        tf.reshape(x, [-1, 1, 1, channels]), ones, zeros, epsilon=self.epsilon,
        is_training=True)
    # The kernel returns the Bessel-corrected variance; Keras averages the batch's own.
    n = tf.cast(tf.shape(x)[0], tf.float32)
    variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(self.moving_variance * self.momentum +
                                variance * (1.0 - self.momentum))
    return tf.cast(tf.reshape(y, [-1, channels]), self.compute_dtype)


def build_probe_model(backbone, image_size, num_classes, block_names=blocks_lib.BLOCK_NAMES,
                      weight_decay=5e-4, target_values=pooling.TARGET_VALUES):
  """Frozen backbone + one pooled, normalised linear head per block.

  Args:
    backbone: a backbone following the b1..b5 contract; set non-trainable here.
    image_size: side of the square images the probes see (fixes the pooling).
    num_classes: outputs of every linear head.
    block_names: which blocks get a head.
    weight_decay: PyTorch-style L2 coefficient on the linear kernels (gradient wd * w).
    target_values: about how many values each pooled map keeps.

  Returns:
    (model with dict outputs {block: logits}, {block: `pooling.Pooling`}).
  """
  unknown = [b for b in block_names if b not in blocks_lib.BLOCK_NAMES]
  if unknown or not block_names:
    raise ValueError(f"probe blocks must be among {', '.join(blocks_lib.BLOCK_NAMES)}, got "
                     f"{', '.join(block_names) or 'none'}")
  backbone.trainable = False
  image = keras.Input((image_size, image_size, 3), name="image")
  maps = backbone(image, training=False)
  outputs, poolings = {}, {}
  regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
  for name in block_names:
    x = keras.ops.stop_gradient(maps[name])
    poolings[name], stack = pooling.pooling_layers(tuple(x.shape[1:]), target_values,
                                                   name=f"{name}_pool")
    for layer in stack:
      x = layer(x)
    x = FeatureNorm(name=f"{name}_bn")(x)
    outputs[name] = keras.layers.Dense(num_classes, kernel_regularizer=regularizer,
                                       name=f"{name}_linear")(x)
  return keras.Model(image, outputs, name="linear_probes"), poolings


def _per_block_targets(block_names):
  def fn(images, labels):
    return images, {name: labels for name in block_names}
  return fn


def train_probes(model, train_dataset, epochs, steps_per_epoch, learning_rate=0.01,
                 momentum=0.9, lr_step_split="10,10,8", lr_decay=0.1, multi_label=False,
                 verbose=0, callbacks=()):
  """Trains every head of a `build_probe_model` model; returns the Keras history dict.

  Args:
    model: from `build_probe_model`.
    train_dataset: batches of (images, labels), repeated (steps are counted).
    epochs, steps_per_epoch: length of training.
    learning_rate, momentum: SGD settings.
    lr_step_split, lr_decay: step schedule (relative piece lengths, factor between pieces).
    multi_label: labels are multi-hot (sigmoid cross-entropy) instead of class indices.
    verbose: Keras fit verbosity.
    callbacks: Keras callbacks for the fit (e.g. `psl_tf.progress.fit_progress`).
  """
  names = list(model.output.keys()) if isinstance(model.output, dict) else list(model.output_names)
  schedule = optim.make_schedule("step", learning_rate, epochs * steps_per_epoch, lr_step_split,
                           lr_decay)
  if multi_label:
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
  else:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=momentum),
                loss={name: loss for name in names})
  history = model.fit(train_dataset.map(_per_block_targets(names)), epochs=epochs,
                      steps_per_epoch=steps_per_epoch, verbose=verbose,
                      shuffle=False, callbacks=list(callbacks))
  return history.history


def predict_blocks(model, dataset):
  """({block: scores [N, C]}, labels) over one pass of a dataset of (images, labels)."""
  scores, labels = {}, []
  for images, batch_labels in dataset:
    outputs = model(images, training=False)
    if not isinstance(outputs, dict):
      outputs = {"out": outputs}
    for name, value in outputs.items():
      scores.setdefault(name, []).append(np.asarray(value))
    labels.append(np.asarray(batch_labels))
  if not labels:
    raise ValueError("the evaluation split is empty")
  return {n: np.concatenate(v) for n, v in scores.items()}, np.concatenate(labels)


def score(scores, labels, multi_label=False):
  """{'top1', 'top5'} (class labels) or {'mAP'} (multi-hot labels), in percent."""
  if multi_label:
    return {"mAP": 100.0 * metrics_lib.mean_average_precision(scores, labels)}
  return {"top1": 100.0 * metrics_lib.topk_accuracy(scores, labels, 1),
          "top5": 100.0 * metrics_lib.topk_accuracy(scores, labels, 5)}


def evaluate_probes(model, eval_dataset, multi_label=False):
  """{block: metrics} of every head on one pass of `eval_dataset`."""
  all_scores, labels = predict_blocks(model, eval_dataset)
  return {name: score(s, labels, multi_label) for name, s in all_scores.items()}


def linear_probe(backbone, train_dataset, eval_dataset, num_classes, image_size, epochs,
                 steps_per_epoch, block_names=blocks_lib.BLOCK_NAMES, learning_rate=0.01,
                 momentum=0.9, weight_decay=5e-4, lr_step_split="10,10,8", lr_decay=0.1,
                 multi_label=False, verbose=0, callbacks=()):
  """Builds, trains and evaluates the probes; returns ({block: metrics}, {block: Pooling})."""
  model, poolings = build_probe_model(backbone, image_size, num_classes, block_names,
                                      weight_decay)
  train_probes(model, train_dataset, epochs, steps_per_epoch, learning_rate, momentum,
               lr_step_split, lr_decay, multi_label, verbose, callbacks)
  return evaluate_probes(model, eval_dataset, multi_label), poolings


def backbone_snapshot(backbone):
  """Copies of every backbone variable (trainable or not), to compare bit for bit."""
  return [np.array(v.numpy(), copy=True) for v in backbone.weights]


def tf_dataset_from_arrays(images, labels, batch_size, repeat):
  """A small helper for callers with in-memory arrays (tests, notebooks)."""
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  if repeat:
    ds = ds.shuffle(len(labels), seed=0).repeat()
  return ds.batch(batch_size)


# ---- probes on stored features -------------------------------------------------------------

FEATURE_DTYPE = np.float16


def feature_extractor(backbone, image_size, block_names=blocks_lib.BLOCK_NAMES,
                      target_values=pooling.TARGET_VALUES):
  """(compiled fn images -> {block: pooled [N, D]}, {block: Pooling}) for a frozen backbone."""
  unknown = [b for b in block_names if b not in blocks_lib.BLOCK_NAMES]
  if unknown or not block_names:
    raise ValueError(f"probe blocks must be among {', '.join(blocks_lib.BLOCK_NAMES)}, got "
                     f"{', '.join(block_names) or 'none'}")
  image = keras.Input((image_size, image_size, 3), name="image")
  maps = backbone(image, training=False)
  outputs, poolings = {}, {}
  for name in block_names:
    poolings[name], stack = pooling.pooling_layers(tuple(maps[name].shape[1:]), target_values,
                                                   name=f"{name}_pool")
    x = maps[name]
    for layer in stack:
      x = layer(x)
    outputs[name] = x
  model = keras.Model(image, outputs, name="pooled_features")
  fn = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
  return fn, poolings


def feature_sizes(backbone, image_size, block_names=blocks_lib.BLOCK_NAMES,
                  target_values=pooling.TARGET_VALUES):
  """{block: pooled feature length} without running the backbone on data."""
  maps = backbone(keras.Input((image_size, image_size, 3)), training=False)
  return {name: pooling.pooled_size(
      tuple(maps[name].shape[1:]),
      pooling.derive_pooling(min(maps[name].shape[1:3]), maps[name].shape[3], target_values))
          for name in block_names}


def extract_features(extract, dataset, num_examples=None, log=None, what="features"):
  """({block: [N, D] float16}, labels) over one pass of a dataset of (images, labels).

  Args:
    extract: from `feature_extractor`.
    dataset: one pass of (images, labels) batches.
    num_examples: the pass's size if known (the arrays are then allocated once).
    log: called with a progress line about every 10 % of the pass.
    what: name of the pass in the progress lines.

  Raises:
    ValueError: if the pass is empty or any feature is not finite (a diverged backbone).
  """
  features, labels, filled = {}, [], 0
  start, next_report = time.time(), 0.1
  for images, batch_labels in dataset:
    out = extract(images)
    n = int(batch_labels.shape[0])
    for name, value in out.items():
      value = value.numpy()
      if not np.all(np.isfinite(value)):
        raise ValueError(f"the backbone gives non-finite {name} features; its weights are "
                         "broken (a diverged run?)")
      if num_examples:
        if name not in features:
          features[name] = np.empty((num_examples, value.shape[1]), FEATURE_DTYPE)
        features[name][filled:filled + n] = value
      else:
        features.setdefault(name, []).append(value.astype(FEATURE_DTYPE))
    labels.append(np.asarray(batch_labels))
    filled += n
    if log and num_examples and filled / num_examples >= next_report:
      log(f"   {what}: {filled}/{num_examples} images, {time.time() - start:.0f} s")
      next_report += 0.1
  if not labels:
    raise ValueError("an evaluation split is empty")
  if num_examples:
    features = {k: v[:filled] for k, v in features.items()}
  else:
    features = {k: np.concatenate(v) for k, v in features.items()}
  return features, np.concatenate(labels)


def _decays_of(weight_decay, names):
  """{block: (weight decays...)} from one value, a sequence, or a per-block mapping."""
  if isinstance(weight_decay, dict):
    out = {k: weight_decay[k] for k in names}
  else:
    out = {k: weight_decay for k in names}
  return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in out.items()}


def head_name(block, weight_decay, several):
  """Output name of a head: the block alone, or `<block>@wd=<value>` when a block has several."""
  return f"{block}@wd={weight_decay:g}" if several else block


def block_of(head):
  return head.split("@", 1)[0]


class GroupedL2(keras.regularizers.Regularizer):
  """L2 penalty on a kernel whose output columns form groups of `width`, each group with its
  own PyTorch-style coefficient (gradient wd * w): the penalty of one Dense layer that holds
  several heads side by side equals the sum of their separate `L2(wd / 2)` penalties."""

  def __init__(self, weight_decays, width):
    self.weight_decays = tuple(float(wd) for wd in weight_decays)
    self.width = int(width)

  def __call__(self, kernel):
    per_column = np.repeat(np.asarray(self.weight_decays, np.float32) / 2, self.width)
    return keras.ops.sum(keras.ops.sum(keras.ops.square(kernel), axis=0) *
                         keras.ops.convert_to_tensor(per_column, kernel.dtype))

  def get_config(self):
    return {"weight_decays": self.weight_decays, "width": self.width}


class GroupedInitializer(keras.initializers.Initializer):
  """Glorot-uniform drawn for each group of `width` output columns on its own, so that heads
  held side by side in one kernel start as they would as separate [D, width] layers."""

  def __init__(self, width):
    self.width = int(width)

  def __call__(self, shape, dtype=None):
    fan_in, columns = shape
    # One initializer per group: an unseeded Keras initializer repeats its draw when called
    # again, and every new one takes the next seed of Keras' global generator.
    return keras.ops.concatenate([keras.initializers.GlorotUniform()((fan_in, self.width), dtype)
                                  for _ in range(columns // self.width)], axis=1)

  def get_config(self):
    return {"width": self.width}


def build_feature_heads(sizes, num_classes, weight_decay=5e-4):
  """BatchNorm-without-affine + linear heads on pooled feature vectors.

  Args:
    sizes: {block: pooled feature length}.
    num_classes: outputs of every head.
    weight_decay: PyTorch-style L2 coefficient (gradient wd * w) of the linear kernels: one
      value, a sequence of values (one head per block and value, named `<block>@wd=<value>`,
      all sharing the block's normalisation, which does not depend on the decay), or a
      {block: value or sequence} mapping.

  A block's heads for several decays are one Dense layer `<block>_linear` holding them side by
  side (head k = output columns k*C .. (k+1)*C - 1, each group initialised and penalised as
  its own layer would be): each step then reads the block's features twice (forward and
  kernel gradient) instead of twice per head.
  """
  decays = _decays_of(weight_decay, list(sizes))
  inputs, outputs = {}, {}
  for name, size in sizes.items():
    inputs[name] = keras.Input((size,), name=name)
    x = FeatureNorm(name=f"{name}_bn")(inputs[name])
    block_decays = decays[name]
    if len(block_decays) == 1:
      wd = block_decays[0]
      outputs[name] = keras.layers.Dense(
          num_classes, kernel_regularizer=keras.regularizers.L2(wd / 2) if wd else None,
          name=f"{name}_linear")(x)
      continue
    logits = keras.layers.Dense(
        num_classes * len(block_decays), name=f"{name}_linear",
        kernel_initializer=GroupedInitializer(num_classes),
        kernel_regularizer=GroupedL2(block_decays, num_classes))(x)
    for k, wd in enumerate(block_decays):
      outputs[head_name(name, wd, True)] = logits[:, k * num_classes:(k + 1) * num_classes]
  return keras.Model(inputs, outputs, name="linear_probes_on_features")


def train_feature_heads(model, features, labels, epochs, batch_size, learning_rate=0.01,
                        momentum=0.9, lr_step_split="10,10,8", lr_decay=0.1, multi_label=False,
                        seed=0, log=None, rows=None):
  """Trains every head on stored features; returns {head: [train top-1 % per epoch]} (or
  mAP-free loss-only history for multi-label data: {head: [mean loss per epoch]}).

  Each epoch visits every training example once in a fresh random order (the last partial
  batch included); the step schedule runs over all epochs' steps. `rows` restricts training to
  those rows of the stored arrays (a validation split held out without copying them).
  """
  names = list(features)
  heads = list(model.output)  # {head: logits} of build_feature_heads
  rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
  n = len(rows)
  steps_per_epoch = max(1, math.ceil(n / batch_size))
  schedule = optim.make_schedule("step", learning_rate, epochs * steps_per_epoch,
                                 lr_step_split, lr_decay)
  optimizer = keras.optimizers.SGD(schedule, momentum=momentum)
  if multi_label:
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
  else:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  variables = model.trainable_variables
  optimizer.build(variables)

  # The features stay in memory as float16 tensors and each step gathers its rows inside the
  # compiled function (passed as arguments, so they are never copied into a graph constant).
  stored = {k: tf.convert_to_tensor(features[k]) for k in names}
  stored_labels = tf.convert_to_tensor(labels)

  @tf.function(reduce_retracing=True)
  def step(stored, stored_labels, idx):
    xs = {k: tf.cast(tf.gather(stored[k], idx), tf.float32) for k in names}
    y = tf.gather(stored_labels, idx)
    with tf.GradientTape() as tape:
      out = model(xs, training=True)
      losses = {h: loss_fn(y, out[h]) for h in heads}
      total = tf.add_n(list(losses.values()) + list(model.losses))
    optimizer.apply(tape.gradient(total, variables), variables)
    if multi_label:
      return {h: v * tf.cast(tf.shape(idx)[0], tf.float32) for h, v in losses.items()}
    return {h: tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out[h], axis=1, output_type=tf.int64),
                                              tf.cast(y, tf.int64)), tf.float32))
            for h in heads}

  rng = np.random.default_rng(seed)
  history = {h: [] for h in heads}
  start = time.time()
  for epoch in range(epochs):
    order = rows[rng.permutation(n)]
    sums = {h: tf.constant(0.0) for h in heads}
    for i in range(steps_per_epoch):
      out = step(stored, stored_labels, tf.constant(order[i * batch_size:(i + 1) * batch_size]))
      sums = {h: sums[h] + out[h] for h in heads}
    sums = {h: float(v) for h, v in sums.items()}
    for h in heads:
      history[h].append(sums[h] / n if multi_label else 100.0 * sums[h] / n)
    if log:
      shown = " ".join(f"{h} {history[h][-1]:.1f}" for h in heads)
      log(f"   probe epoch {epoch + 1}/{epochs} ({time.time() - start:.0f} s): train "
          f"{'top-1 %' if not multi_label else 'loss'} {shown}")
  return history


def predict_features(model, features, batch_size=1024, rows=None):
  """{head: scores [N, C]} of the heads on stored features (only `rows` of them if given)."""
  names = list(features)
  rows = np.arange(len(next(iter(features.values())))) if rows is None else np.asarray(rows)
  scores = {}
  for start in range(0, len(rows), batch_size):
    idx = rows[start:start + batch_size]
    out = model({k: tf.convert_to_tensor(features[k][idx], tf.float32) for k in names},
                training=False)
    for h, value in out.items():
      scores.setdefault(h, []).append(np.asarray(value))
  return {h: np.concatenate(v) for h, v in scores.items()}


def parse_weight_decays(values, flag="--probe_weight_decays"):
  """A list of weight decays given as text, as floats; ValueError in one line for a bad one."""
  out = []
  for text in values:
    try:
      value = float(text)
    except ValueError:
      value = float("nan")
    if not 0.0 <= value <= 1.0:  # also false for NaN
      raise ValueError(f"{flag} takes numbers in [0, 1], got {text!r}")
    out.append(value)
  if len(set(out)) != len(out):
    raise ValueError(f"{flag} lists a value twice: {','.join(values)}")
  return tuple(out)


def select_weight_decays(model, features, labels, val_rows, weight_decays, multi_label=False):
  """({block: best decay}, {block: {decay: validation metric}}) of heads trained with several
  decays, by top-1 (mAP for multi-label data) on the held-out `val_rows`; ties go to the
  smaller decay."""
  scores = predict_features(model, features, rows=val_rows)
  chosen, table = {}, {}
  for block in features:
    table[block] = {}
    for wd in sorted(weight_decays):
      metrics = score(scores[head_name(block, wd, True)], labels[val_rows], multi_label)
      table[block][f"{wd:g}"] = metrics["mAP" if multi_label else "top1"]
    best = max(sorted(weight_decays), key=lambda wd, b=block: table[b][f"{wd:g}"])
    chosen[block] = best
  return chosen, table


def linear_probe_on_features(backbone, train_dataset, eval_dataset, num_classes, image_size,
                             epochs, batch_size, block_names=blocks_lib.BLOCK_NAMES,
                             learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                             lr_step_split="10,10,8", lr_decay=0.1, multi_label=False,
                             num_train=None, num_eval=None, seed=0, log=None,
                             val_fraction=0.1):
  """Extracts pooled features once, trains the heads on them, scores the test features.

  Args:
    train_dataset, eval_dataset: one pass each of (centre-view images, labels) batches.
    num_train, num_eval: their sizes if known (arrays allocated once).
    weight_decay: one value, or a sequence to choose from per block: heads with every value
      are trained on the training split minus a random `val_fraction` of it, each block takes
      the value whose head scores best on that held-out part, and the chosen heads are then
      trained again on the whole training split. The test split is never used to choose.
    Others as `linear_probe`; `epochs` are passes over the stored training features.

  Returns:
    ({block: metrics, with 'train_curve' per epoch for class labels, and 'weight_decay' plus
    'val_by_weight_decay' when a value was chosen}, {block: Pooling}).
  """
  backbone.trainable = False
  extract, poolings = feature_extractor(backbone, image_size, block_names)
  train, train_labels = extract_features(extract, train_dataset, num_train, log, "train features")
  test, test_labels = extract_features(extract, eval_dataset, num_eval, log, "test features")
  warning = not multi_label and guards.one_class_warning(train_labels, "the probes' training "
                                                         "features")
  if warning:
    logging.warning(warning)
  sizes = {k: v.shape[1] for k, v in train.items()}
  decays = (tuple(weight_decay) if isinstance(weight_decay, (list, tuple)) else (weight_decay,))
  chosen, table = decays[0], None  # replaced by the per-block choice below
  if len(decays) > 1:
    n = len(train_labels)
    held = int(round(val_fraction * n))
    if not 0 < held < n:
      raise ValueError(f"choosing among weight decays needs a validation part of the training "
                       f"split: val_fraction {val_fraction} of {n} images leaves none")
    order = np.random.default_rng(seed).permutation(n)
    fit_rows, val_rows = np.sort(order[held:]), np.sort(order[:held])
    if log:
      log(f"   choosing the weight decay of every head among {', '.join(f'{d:g}' for d in decays)}"
          f" on {held} held-out training images")
    model = build_feature_heads(sizes, num_classes, decays)
    train_feature_heads(model, train, train_labels, epochs, batch_size, learning_rate,
                        momentum, lr_step_split, lr_decay, multi_label, seed, log, fit_rows)
    chosen, table = select_weight_decays(model, train, train_labels, val_rows, decays,
                                         multi_label)
    if log:
      log("   chosen: " + ", ".join(f"{b} {d:g}" for b, d in chosen.items()))
  model = build_feature_heads(sizes, num_classes, chosen)
  history = train_feature_heads(model, train, train_labels, epochs, batch_size, learning_rate,
                                momentum, lr_step_split, lr_decay, multi_label, seed, log)
  scores = predict_features(model, test)
  results = {}
  for name in block_names:
    results[name] = score(scores[name], test_labels, multi_label)
    results[name]["train_curve" if not multi_label else "train_loss_curve"] = [
        round(v, 3) for v in history[name]]
    if table is not None:
      results[name]["weight_decay"] = chosen[name]
      results[name]["val_by_weight_decay"] = {k: round(v, 3) for k, v in table[name].items()}
  return results, poolings
