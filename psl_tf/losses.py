"""Contrastive losses: NT-Xent (SimCLR) with negatives from every replica.

The functions return the mean over the LOCAL anchors; `psl_tf.trainer.StageModel` divides a
task's loss by the replica count exactly once, and gradients are summed over replicas, so
the result equals the loss of one device on the global batch (tests check this).
"""

import tensorflow as tf

# Subtracted from the logit of an embedding with itself, so it never counts as a negative.
_SELF_MASK = 1e9


def replica_gather(x):
  """Concatenates `x` from every replica along axis 0.

  Returns:
    (gathered, offset): the global tensor and the row where this replica's rows start.
    Without a strategy (or with one replica) `x` itself and 0. The gather is
    differentiable: its gradient sums the upstream gradients of all replicas, so each
    replica's `x` gets the derivative of the total loss.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return x, tf.constant(0, tf.int32)
  gathered = context.all_gather(x, axis=0)
  replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
  return gathered, replica * tf.shape(x)[0]


def contrastive_logits(z_a, z_b, temperature):
  """Logits and positive indices of NT-Xent for the 2N local anchors.

  Row i < N is anchor a_i, row N + i is b_i. Candidates are every b then every a of the
  global batch (all replicas), with the anchor itself masked out; the positive of a_i is
  b_i and of b_i is a_i.

  Returns:
    (logits float32 [2N, 2M], labels int32 [2N]) with M the global batch.
  """
  a = tf.math.l2_normalize(tf.cast(z_a, tf.float32), axis=1)
  b = tf.math.l2_normalize(tf.cast(z_b, tf.float32), axis=1)
  all_a, offset = replica_gather(a)
  all_b, _ = replica_gather(b)
  n = tf.shape(a)[0]
  labels = offset + tf.range(n)
  self_mask = tf.one_hot(labels, tf.shape(all_a)[0]) * _SELF_MASK
  inv_t = 1.0 / float(temperature)
  logits_ab = tf.matmul(a, all_b, transpose_b=True) * inv_t
  logits_aa = tf.matmul(a, all_a, transpose_b=True) * inv_t - self_mask
  logits_ba = tf.matmul(b, all_a, transpose_b=True) * inv_t
  logits_bb = tf.matmul(b, all_b, transpose_b=True) * inv_t - self_mask
  logits = tf.concat([tf.concat([logits_ab, logits_aa], axis=1),
                      tf.concat([logits_ba, logits_bb], axis=1)], axis=0)
  return logits, tf.concat([labels, labels], axis=0)


def nt_xent(z_a, z_b, temperature):
  """NT-Xent (normalized temperature-scaled cross entropy, SimCLR eq. 1).

  For the 2N embeddings of N images (rows of `z_a` and `z_b` are the two views of the same
  images), with s the cosine similarity,

    l(i, j) = -log( exp(s(i, j) / t) / sum_{k != i} exp(s(i, k) / t) )

  over the 2M embeddings of the global batch (negatives are gathered from every replica
  with `all_gather` when more than one replica is in sync), averaged over the 2N local
  anchors: (1 / 2N) sum_i [l(a_i, b_i) + l(b_i, a_i)].

  Args:
    z_a: [N, D] projections of the first views.
    z_b: [N, D] projections of the second views.
    temperature: t > 0.

  Returns:
    Scalar float32: the mean over the local anchors (not divided by the replica count).
  """
  if temperature <= 0:
    raise ValueError(f"the NT-Xent temperature must be positive, got {temperature}")
  logits, labels = contrastive_logits(z_a, z_b, temperature)
  return tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def contrastive_accuracy(z_a, z_b, temperature=1.0):
  """Per-anchor 0/1: is the positive ranked first among all candidates? float32 [2N]."""
  logits, labels = contrastive_logits(z_a, z_b, temperature)
  predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
  return tf.cast(tf.equal(predicted, labels), tf.float32)
