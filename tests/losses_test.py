"""NT-Xent against its formula, on one device and across two MirroredStrategy replicas."""

import numpy as np
import pytest
import tensorflow as tf

from psl_tf import losses


def numpy_nt_xent(z_a, z_b, t):
  """SimCLR eq. 1 written out: 2N embeddings, positive pairs (a_i, b_i), mean of l(i, j)."""
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z_a)
  sim = z @ z.T / t
  total = 0.0
  for i in range(2 * n):
    j = i + n if i < n else i - n
    others = [k for k in range(2 * n) if k != i]
    total += -(sim[i, j] - np.log(np.sum(np.exp(sim[i, others]))))
  return total / (2 * n)


def numpy_accuracy(z_a, z_b):
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z_a)
  sim = z @ z.T
  np.fill_diagonal(sim, -np.inf)
  positives = np.concatenate([np.arange(n) + n, np.arange(n)])
  return (np.argmax(sim, axis=1) == positives).astype(np.float32)


@pytest.mark.parametrize("n,t", [(1, 0.5), (4, 0.1), (7, 0.5), (16, 1.0), (9, 0.07)])
def test_nt_xent_matches_numpy(n, t):
  rng = np.random.default_rng(n)
  z_a = rng.normal(size=(n, 5)).astype(np.float32)
  z_b = rng.normal(size=(n, 5)).astype(np.float32)
  got = float(losses.nt_xent(z_a, z_b, t))
  np.testing.assert_allclose(got, numpy_nt_xent(z_a, z_b, t), rtol=1e-4, atol=1e-6)


def test_nt_xent_is_scale_invariant_and_rewards_aligned_views():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(8, 6)).astype(np.float32)
  aligned = float(losses.nt_xent(z, 3.0 * z, 0.1))
  shuffled = float(losses.nt_xent(z, z[::-1], 0.1))
  assert aligned < shuffled
  np.testing.assert_allclose(aligned, numpy_nt_xent(z, z, 0.1), rtol=1e-4)


def test_contrastive_accuracy_matches_numpy():
  rng = np.random.default_rng(3)
  z_a = rng.normal(size=(6, 4)).astype(np.float32)
  z_b = (z_a + rng.normal(scale=0.8, size=(6, 4))).astype(np.float32)
  np.testing.assert_array_equal(losses.contrastive_accuracy(z_a, z_b).numpy(),
                                numpy_accuracy(z_a, z_b))


def test_rejects_non_positive_temperature():
  with pytest.raises(ValueError, match="temperature"):
    losses.nt_xent(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), 0.0)


def test_mirrored_equals_single_device_loss_and_gradient(two_replica_strategy):
  """Two replicas with 4 images each vs one device with all 8: the per-replica losses
  divided by the replica count sum to the global loss, and the summed gradients of a shared
  projection equal the single-device gradient (the gather passes gradients across)."""
  rng = np.random.default_rng(7)
  x_a = rng.normal(size=(8, 5)).astype(np.float32)
  x_b = rng.normal(size=(8, 5)).astype(np.float32)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  t = 0.2

  w = tf.Variable(w0)
  with tf.GradientTape() as tape:
    single = losses.nt_xent(x_a @ w, x_b @ w, t)
  single_grad = tape.gradient(single, w).numpy()
  np.testing.assert_allclose(float(single), numpy_nt_xent(x_a @ w0, x_b @ w0, t), rtol=1e-4)

  strategy = two_replica_strategy
  replicas = strategy.num_replicas_in_sync
  assert replicas == 2
  with strategy.scope():
    w_m = tf.Variable(w0)

  def per_replica_inputs(context):
    i = context.replica_id_in_sync_group
    return x_a[4 * i:4 * i + 4], x_b[4 * i:4 * i + 4]

  inputs = strategy.experimental_distribute_values_from_function(per_replica_inputs)

  @tf.function
  def step(inputs):
    def replica_fn(pair):
      a, b = pair
      with tf.GradientTape() as tape:
        scaled = losses.nt_xent(a @ w_m, b @ w_m, t) / replicas
      grad = tape.gradient(scaled, w_m)
      return scaled, tf.distribute.get_replica_context().all_reduce("sum", grad)
    return strategy.run(replica_fn, args=(inputs,))

  scaled, grads = step(inputs)
  total = float(strategy.reduce("sum", scaled, axis=None))
  np.testing.assert_allclose(total, float(single), rtol=1e-5)
  for grad in strategy.experimental_local_results(grads):
    np.testing.assert_allclose(grad.numpy(), single_grad, rtol=1e-4, atol=1e-6)
