"""Linear probes on the frozen blocks B1..B5, all trained at once (Goyal et al. 2019).

One pass through the frozen backbone feeds one head per block: the block's map is
average-pooled to about 9,000 values (`psl_tf.pooling`), normalised by a BatchNorm without
scale and shift, and classified by one linear layer. Every head gets its own loss; the sum is
minimised by SGD with momentum, a step schedule and L2 weight decay on the linear kernels.
The backbone runs in inference mode and is not trainable, so its weights (BatchNorm moving
statistics included) are left exactly as they were.
"""

import keras
import numpy as np
import tensorflow as tf

from psl_tf import metrics as metrics_lib
from psl_tf import optim
from psl_tf import pooling
from psl_tf.models import blocks as blocks_lib


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
    x = keras.layers.BatchNormalization(center=False, scale=False, name=f"{name}_bn")(x)
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
