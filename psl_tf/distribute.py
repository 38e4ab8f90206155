"""Picking a tf.distribute strategy by name. No home-made distribution: only TF's own."""

import os
import tempfile

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def make_strategy(name="auto", tpu_address=""):
  """Returns a `tf.distribute.Strategy`.

  Args:
    name: 'auto' (MirroredStrategy over several GPUs, else one device), 'one_device',
      'mirrored' (every local GPU, or the local CPU devices), 'multi_worker'
      (MultiWorkerMirroredStrategy, cluster from TF_CONFIG) or 'tpu'.
    tpu_address: for 'tpu', the TPU name or address ('' for a local / Colab TPU).
  """
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
  gpus = tf.config.list_logical_devices("GPU")
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device"
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
  """True on the worker that writes files (always, outside multi-worker training)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type is None or task_type == "chief" or (
      task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs)


def writable_dir(path, strategy):
  """`path` on the chief; a private temporary folder on other workers.

  Multi-worker checkpointing needs every worker to save (the saves are collective), but
  only the chief's copy is kept.
  """
  if is_chief(strategy):
    return path
  return os.path.join(tempfile.gettempdir(), f"psl_tf_worker_{os.getpid()}",
                      os.path.basename(path.rstrip("/")))
