"""Weighted cosine kNN (Wu et al. 2018)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf.evaluation import knn
from psl_tf.models import build_backbone


def test_constructed_example_gets_the_right_class():
  # Class 0 points along x, class 1 along y, class 2 along z; lengths differ, so only the
  # cosine (not the Euclidean distance) puts the query with its class.
  train = np.array([[1, 0.1, 0], [5, 0, 0.2], [0, 1, 0], [0.1, 7, 0], [0, 0, 1], [0, 0.2, 3]],
                   np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  queries = np.array([[10, 1, 0], [0.1, 0.01, 0.0], [0, 0.5, 0.1], [0.1, 0, 9]], np.float32)
  votes = knn.knn_scores(train, labels, queries, num_classes=3, k=2, temperature=0.1)
  np.testing.assert_array_equal(np.argmax(votes, 1), [0, 0, 1, 2])


def test_votes_match_the_formula():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(30, 5)).astype(np.float32)
  labels = rng.integers(0, 4, 30)
  queries = rng.normal(size=(7, 5)).astype(np.float32)
  votes = knn.knn_scores(train, labels, queries, 4, k=5, temperature=0.5, chunk=3)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = unit(queries) @ unit(train).T
  expected = np.zeros((7, 4))
  for i in range(7):
    for j in np.argsort(-sim[i])[:5]:
      expected[i, labels[j]] += np.exp(sim[i, j] / 0.5)
  np.testing.assert_allclose(votes, expected, rtol=1e-4)


def test_k_larger_than_the_bank_uses_all_of_it():
  votes = knn.knn_scores(np.eye(3, dtype=np.float32), [0, 1, 1], np.eye(3, dtype=np.float32)[:1],
                         2, k=200, temperature=1.0)
  np.testing.assert_allclose(votes[0], [np.e, 2.0], rtol=1e-5)


@pytest.mark.parametrize("how", ["global", "goyal"])
def test_knn_evaluate_on_backbone_features(how):
  keras.utils.set_random_seed(0)
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  rng = np.random.default_rng(0)
  # Two colours: the random backbone's features separate them.
  labels = np.arange(40) % 2
  images = np.where(labels[:, None, None, None] == 0, [0.9, 0.1, 0.1], [0.1, 0.1, 0.9])
  images = np.clip(images + rng.normal(0, 0.03, (40, 16, 16, 3)), 0, 1).astype(np.float32)
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
  results = knn.knn_evaluate(backbone, ds, ds, 2, ("b1", "b5"), k=5, how=how)
  assert set(results) == {"b1", "b5"}
  assert results["b1"]["top1"] == 100.0 and results["b1"]["top5"] == 100.0
  with pytest.raises(ValueError, match="kNN pooling"):
    knn.pooled_features(backbone, ds, ("b1",), how="max")
