"""Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018).

Features are L2-normalised, so the dot product is the cosine similarity. Each test example
takes its k most similar training examples; neighbour i votes for its class with weight
``exp(s_i / T)``; classes are ranked by their summed votes. No training, so it is a fast
monitor of feature quality on any block.
"""

import numpy as np
import tensorflow as tf

from psl_tf.evaluation import metrics as metrics_lib
from psl_tf.evaluation import pooling
from psl_tf.models import blocks as blocks_lib

POOLINGS = ("global", "goyal")


def _normalise(x):
  x = tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1])
  return tf.math.l2_normalize(x, axis=1)


def knn_scores(train_features, train_labels, test_features, num_classes, k=200,
               temperature=0.07, chunk=256):
  """Class votes [N_test, C] of the weighted kNN classifier.

  Args:
    train_features: [N_train, D] (or any shape with a leading batch axis) memory bank.
    train_labels: [N_train] integer labels in [0, num_classes).
    test_features: [N_test, D] queries.
    num_classes: C.
    k: neighbours per query (capped at N_train).
    temperature: T of the exp(s / T) weights.
    chunk: queries per matrix product, to bound memory.
  """
  bank = _normalise(tf.convert_to_tensor(train_features))
  labels = tf.convert_to_tensor(np.asarray(train_labels), tf.int64)
  queries = _normalise(tf.convert_to_tensor(test_features))
  k = int(min(k, bank.shape[0]))
  if k < 1:
    raise ValueError("kNN needs at least one training example")
  out = []
  for start in range(0, int(queries.shape[0]), chunk):
    similarity = tf.matmul(queries[start:start + chunk], bank, transpose_b=True)
    top, index = tf.math.top_k(similarity, k=k)
    weights = tf.exp(top / temperature)
    one_hot = tf.one_hot(tf.gather(labels, index), num_classes, dtype=tf.float32)
    out.append(tf.reduce_sum(one_hot * weights[..., None], axis=1).numpy())
  return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def pooled_features(backbone, dataset, block_names=blocks_lib.BLOCK_NAMES, how="global"):
  """({block: [N, D] features}, labels) of one pass over (images, labels) batches.

  how: 'global' (average over space: one value per channel) or 'goyal' (the ~9,000-value
  pooling of the linear probes, `psl_tf.evaluation.pooling`).
  """
  if how not in POOLINGS:
    raise ValueError(f"kNN pooling must be one of {POOLINGS}, got {how!r}")
  features, labels, stacks = {}, [], {}
  for images, batch_labels in dataset:
    maps = backbone(images, training=False)
    for name in block_names:
      x = maps[name]
      if how == "global":
        x = tf.reduce_mean(x, axis=[1, 2])
      else:
        if name not in stacks:
          stacks[name] = pooling.pooling_layers(tuple(x.shape[1:]), name=f"{name}_knn")[1]
        for layer in stacks[name]:
          x = layer(x)
      features.setdefault(name, []).append(np.asarray(x))
    labels.append(np.asarray(batch_labels))
  if not labels:
    raise ValueError("an evaluation split is empty")
  return {n: np.concatenate(v) for n, v in features.items()}, np.concatenate(labels)


def knn_evaluate(backbone, train_dataset, eval_dataset, num_classes,
                 block_names=blocks_lib.BLOCK_NAMES, k=200, temperature=0.07, how="global"):
  """{block: {'top1', 'top5'}} (percent) of the weighted kNN classifier on every block."""
  train, train_labels = pooled_features(backbone, train_dataset, block_names, how)
  test, test_labels = pooled_features(backbone, eval_dataset, block_names, how)
  results = {}
  for name in block_names:
    votes = knn_scores(train[name], train_labels, test[name], num_classes, k, temperature)
    results[name] = {"top1": 100.0 * metrics_lib.topk_accuracy(votes, test_labels, 1),
                     "top5": 100.0 * metrics_lib.topk_accuracy(votes, test_labels, 5)}
  return results
