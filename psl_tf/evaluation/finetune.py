"""Semi-supervised evaluation: fine-tune the whole network on a small labelled subset.

Subsets are class-balanced (the same number of images per class, about ``fraction * N / C``)
and chosen deterministically from a seed, like the 1% and 10% ImageNet subsets of the paper's
Table 7; or read from a file of image ids (one per line, as SimCLR's published subsets), which
are matched against file names (folders, TFDS ``file_name``) or example indices (demo).
"""

import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from psl_tf import data
from psl_tf import guards
from psl_tf import keras_private
from psl_tf import optim
from psl_tf import precision as precision_lib
from psl_tf.evaluation import probes


def balanced_subset(labels, fraction, seed=0):
  """Sorted indices of a class-balanced subset with about `fraction` of the examples.

  Every class gets ``max(1, round(fraction * N / C))`` examples (fewer if it has fewer), drawn
  without replacement by a generator seeded with `seed`, so the same seed gives the same
  subset.
  """
  labels = np.asarray(labels).reshape(-1)
  if not 0 < fraction <= 1:
    raise ValueError(f"the label fraction must be in (0, 1], got {fraction}")
  if labels.size == 0:
    raise ValueError("cannot take a subset of an empty split")
  classes = np.unique(labels)
  per_class = max(1, int(round(fraction * labels.size / classes.size)))
  rng = np.random.default_rng(seed)
  chosen = []
  for c in classes:  # sorted, so the draws do not depend on the data order of classes
    members = np.flatnonzero(labels == c)
    chosen.append(rng.permutation(members)[:per_class])
  return np.sort(np.concatenate(chosen))


def read_id_file(path):
  """Ids listed in a text file, one per line; blank lines and '#' comments are skipped."""
  if not tf.io.gfile.exists(path):
    raise ValueError(f"label subset file {path} does not exist")
  with tf.io.gfile.GFile(path) as f:
    return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def subset_from_ids(ids, wanted):
  """Sorted indices of `ids` (one per example) that appear in `wanted`."""
  position = {}
  for i, name in enumerate(ids):
    position.setdefault(name, i)
  found = sorted(position[w] for w in set(wanted) if w in position)
  missing = len(set(wanted)) - len(found)
  if not found:
    raise ValueError(f"none of the {len(set(wanted))} ids in the subset file match this split "
                     f"(ids look like {', '.join(list(ids)[:3])})")
  if missing:
    logging.warning("%d id(s) of the subset file are not in this split", missing)
  return np.asarray(found, np.int64)


def source_labels_and_ids(source):
  """(labels [N], ids [N]) of a `psl_tf.data.Source`, in element order.

  Ids are file base names (folders), TFDS ``file_name`` / ``image/filename`` features when
  present, otherwise the example's index as a string.
  """
  labels, ids = [], []
  for i, element in enumerate(source.elements.as_numpy_iterator()):
    if isinstance(element, dict):
      label = element.get("label", -1)
      name = element.get("file_name", element.get("image/filename", None))
    else:
      label, name = element[-1], element[0] if isinstance(element[0], bytes) else None
    labels.append(int(label))
    if isinstance(name, bytes):
      name = os.path.basename(name.decode())
    ids.append(str(i) if name is None else name)
  return np.asarray(labels, np.int64), ids


def subset_source(source, indices):
  """A `Source` with only the elements at `indices` (kept in source order)."""
  indices = np.asarray(indices, np.int64)
  total = source.num_examples or int(indices.max()) + 1
  mask = np.zeros(max(total, int(indices.max()) + 1), bool)
  mask[indices] = True
  keep = tf.constant(mask)
  elements = (source.elements.enumerate()
              .filter(lambda i, element: keep[i])
              .map(lambda i, element: element))
  return data.Source(f"{source.name}[{len(indices)}]", elements, source.decode, len(indices),
                     source.num_classes, source.skipped)


def build_classifier(backbone, image_size, num_classes):
  """Backbone (trainable, BatchNorm in training mode when fitting) + global pool + linear."""
  backbone.trainable = True
  image = keras.Input((image_size, image_size, 3), name="image")
  features = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(image)["b5"])
  logits = keras.layers.Dense(num_classes, name="classifier", dtype="float32")(features)
  return keras.Model(image, logits, name="finetune")


def finetune(backbone, train_dataset, eval_dataset, num_classes, image_size, epochs,
             steps_per_epoch, learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
             lr_schedule="step", lr_step_split="10,10,8", lr_decay=0.1, verbose=0,
             callbacks=(), precision="float32"):
  """Fine-tunes backbone + linear classifier; returns {'top1', 'top5'} in percent.

  Weight decay is applied by the optimizer to kernels only (never to biases or BatchNorm).
  `precision` is the policy the backbone was built under ('mixed_float16' adds Keras' loss
  scaling; the classifier's logits are float32 under any policy).
  """
  unsafe = guards.onednn_unsafe_message(backbone, keras_private.onednn_enabled(), fix=None)
  if unsafe:
    raise ValueError(unsafe)
  model = build_classifier(backbone, image_size, num_classes)
  schedule = optim.make_schedule(lr_schedule, learning_rate, epochs * steps_per_epoch,
                                 lr_step_split, lr_decay)
  optimizer = keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay or None)
  if weight_decay:
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if not optim.is_decayed(v)])
  model.compile(optimizer=precision_lib.wrap_optimizer(optimizer, precision),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(train_dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
            shuffle=False, callbacks=list(callbacks))
  scores, labels = probes.predict_blocks(model, eval_dataset)
  return probes.score(scores["out"], labels)
