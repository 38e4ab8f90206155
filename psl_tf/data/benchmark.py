"""Timing helpers shared by the scripts in `scripts/` (never by unit tests).

Rates are images per second of the caller's batch; the scripts print them side by side and
as ratios from one run, since machines here are shared and noisy.
"""

import time

import tensorflow as tf

from psl_tf import data


def pipeline_rate(source, example_fn, batch_size, batches=20, warmup=3, seed=1, batch_fn=None):
  """Images/s out of the real training input_fn (shuffle, decode, task map, batch).

  Returns (images per second, the last batch's inputs).
  """
  input_fn = data.make_input_fn(source, example_fn, batch_size, seed=seed, training=True,
                                shuffle_buffer=1000, batch_fn=batch_fn)
  iterator = iter(input_fn())
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    inputs, _ = next(iterator)
  tf.nest.map_structure(lambda t: t.numpy(), inputs)
  return batches * batch_size / (time.perf_counter() - start), inputs


def fit_rate(model, inputs, targets, steps, warmup=2):
  """Images/s of `model.fit` steps on one batch held in memory (input cost excluded).

  The first `warmup` steps trace and compile the step and are not timed.
  """
  dataset = tf.data.Dataset.from_tensors((inputs, targets)).repeat()
  model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
  start = time.perf_counter()
  model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
  batch = tf.nest.flatten(inputs)[0].shape[0]
  return steps * batch / (time.perf_counter() - start)
