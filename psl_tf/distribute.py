"""Picking a tf.distribute strategy by name. No home-made distribution: only TF's own."""

import json
import os
import tempfile

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def split_cpu(replicas):
  """Splits the local CPU into `replicas` logical devices; call before TensorFlow starts.

  Raises ValueError if TensorFlow already initialised its devices.
  """
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
  except RuntimeError as e:
    raise ValueError(f"cannot split the CPU into {replicas} devices: {e}") from e


class CpuReplicasStrategy(tf.distribute.MirroredStrategy):
  """MirroredStrategy over N logical CPU devices with one input pipeline per replica.

  The single-process twin of an N-worker `MultiWorkerMirroredStrategy` with one CPU each:
  replica i reads what worker i reads (shard i of the examples, pipeline seed i), with the
  same per-replica batch, so both runs train on the same batches and their weights agree to
  float rounding (the order of the gradient all-reduce may differ). For testing the
  multi-worker path on one machine (scripts/multi_worker_drill.py); not faster than one device.
  """

  def __init__(self, replicas):
    super().__init__([f"/cpu:{i}" for i in range(replicas)])

  def distribute_datasets_from_function(self, dataset_fn, options=None):
    options = options or tf.distribute.InputOptions(
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)
    return super().distribute_datasets_from_function(dataset_fn, options)


def check_tf_config(text):
  """Raises ValueError (one line naming TF_CONFIG) unless `text`, the TF_CONFIG environment
  variable, describes a cluster and this process's task in it.

  Without TF_CONFIG, MultiWorkerMirroredStrategy trains as a single worker that is its own
  chief: started on every machine of a cluster, each would write the shared work directory."""
  if not text:
    raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable (the "
                     "cluster and this worker's task, e.g. {\"cluster\": {\"worker\": "
                     "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": \"worker\", "
                     "\"index\": 0}}); it is not set. On one machine use --strategy=auto")
  try:
    value = json.loads(text)
  except ValueError as e:
    raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {text[:80]!r}") from None
  cluster = value.get("cluster") if isinstance(value, dict) else None
  task = value.get("task") if isinstance(value, dict) else None
  if not isinstance(cluster, dict) or not cluster:
    raise ValueError(f"TF_CONFIG has no \"cluster\" (a mapping of job name to addresses): "
                     f"{text[:80]!r}")
  if not isinstance(task, dict) or "type" not in task or "index" not in task:
    raise ValueError(f"TF_CONFIG has no \"task\" with \"type\" and \"index\" (which task of "
                     f"the cluster this process is): {text[:80]!r}")
  addresses = cluster.get(task["type"])
  if not isinstance(addresses, list) or not isinstance(task["index"], int) or not (
      0 <= task["index"] < len(addresses)):
    jobs = ", ".join(f"{k}: {len(v)}" for k, v in cluster.items() if isinstance(v, list))
    raise ValueError(f"TF_CONFIG's task {task['type']!r} {task['index']!r} is not in its "
                     f"cluster ({jobs})")


def make_strategy(name="auto", tpu_address="", cpu_replicas=0):
  """Returns a `tf.distribute.Strategy`.

  Args:
    name: 'auto' (MirroredStrategy over several GPUs, else one device), 'one_device',
      'mirrored' (every local GPU, or the local CPU devices), 'multi_worker'
      (MultiWorkerMirroredStrategy, cluster from TF_CONFIG) or 'tpu'.
    tpu_address: for 'tpu', the TPU name or address ('' for a local / Colab TPU).
    cpu_replicas: with 'mirrored', mirror over this many logical CPU devices (made by
      `split_cpu` before TensorFlow starts) with one input pipeline per replica: a
      `CpuReplicasStrategy`. 0: the usual MirroredStrategy.
  """
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
  if cpu_replicas and name != "mirrored":
    raise ValueError(f"--cpu_replicas={cpu_replicas} needs --strategy=mirrored, got {name}")
  if cpu_replicas:
    return CpuReplicasStrategy(cpu_replicas)
  if name == "multi_worker":
    check_tf_config(os.environ.get("TF_CONFIG", ""))
    # First, before anything lists devices: that starts the runtime, after which collective
    # ops can no longer be configured ("Collective ops must be configured at program startup").
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices("GPU")
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device"
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
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
  only the chief's copy is kept. Every worker restores from the chief's copy (`path`), so the
  work directory must be on a file system all workers read (one machine, NFS, GCS).
  """
  if is_chief(strategy):
    return path
  return os.path.join(tempfile.gettempdir(), f"psl_tf_worker_{os.getpid()}",
                      os.path.basename(path.rstrip("/")))


def average_over_replicas(variables):
  """In a replica context with several replicas, sets every replica's copy of `variables` to
  their mean over the replicas (one all-reduce); otherwise does nothing.

  Keras 3 creates BatchNorm's moving statistics without a cross-replica aggregation, so under
  MirroredStrategy / MultiWorkerMirroredStrategy each replica updates its own copy from its
  own batches, and checkpoints and saved weights keep replica 0's. Averaging them after every
  step keeps one set of statistics for the whole batch (what TF-Keras 2's MEAN aggregation
  did): frozen blocks then normalise alike on every replica, and a run resumed from saved
  weights continues exactly as an uninterrupted one.
  """
  context = tf.distribute.get_replica_context()
  if not variables or context is None or context.num_replicas_in_sync == 1:
    return
  # Read on the replica's own device: under MultiWorkerMirroredStrategy a step's tensors can
  # have no device of their own, and an all-reduce needs one to name its destination.
  with tf.device(variables[0].value.device):
    local = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
  means = context.all_reduce(tf.distribute.ReduceOp.MEAN, local)
  for variable, mean in zip(variables, means):
    variable.assign(mean)
