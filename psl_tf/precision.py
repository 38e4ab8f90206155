"""Numeric precision of training: Keras mixed-precision policies, chosen by `--precision`.

* ``float32``: everything in float32 (the default).
* ``mixed_bfloat16``: layers compute in bfloat16, variables stay float32. Same exponent
  range as float32, so no loss scaling is needed. Fast on CPUs with AVX512_BF16 or AMX
  (oneDNN), on TPUs and on Ampere or newer GPUs.
* ``mixed_float16``: layers compute in float16, variables stay float32, and the loss is scaled
  by Keras' dynamic `LossScaleOptimizer` so that small gradients do not underflow (GPUs).
* ``auto``: ``mixed_bfloat16`` on a TPU or on a CPU with AVX512_BF16 / AMX, else ``float32``.

What stays float32 under a mixed policy, whatever the layers compute in: every variable (Keras
keeps variables in float32 and casts them in the layer), BatchNorm's statistics and moving
averages (Keras' BatchNormalization, and `psl_tf.models.revnet.BatchNorm`, normalise in
float32), the heads' last layers (``dtype="float32"``: logits and projections), NT-Xent's
similarities (`psl_tf.losses` casts the projections), and every loss and metric (the trainer
casts the model's outputs to float32 before the loss).

The policy is process-wide in Keras, so `policy_scope` sets it for the duration of a run and
puts the previous one back: a notebook or a test that runs a bfloat16 run and then builds a
float32 model gets float32.
"""

import contextlib
import functools
import os

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# CPU flags (as /proc/cpuinfo spells them) with native bfloat16 arithmetic that oneDNN uses.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path="/proc/cpuinfo"):
  """The CPU's feature flags (lower case), or an empty set where /proc/cpuinfo is missing."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def resolve(precision, flags=None, tpu=None, gpu_compute_capability=None):
  """The Keras policy name for a `--precision` value; ``auto`` is decided here.

  Args:
    precision: one of PRECISIONS.
    flags: CPU flags (default: this machine's).
    tpu: whether a TPU is in use (default: whether TensorFlow sees a TPU device).
    gpu_compute_capability: (major, minor) of the first GPU, or None if there is none
      (default: asked from TensorFlow).

  Returns:
    'float32', 'mixed_bfloat16' or 'mixed_float16'.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
  if precision != "auto":
    return precision
  if tpu is None:
    tpu = bool(tf.config.list_logical_devices("TPU"))
  if tpu:
    return "mixed_bfloat16"
  if gpu_compute_capability is None:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
      details = tf.config.experimental.get_device_details(gpus[0])
      gpu_compute_capability = details.get("compute_capability")
  if gpu_compute_capability:
    # Ampere (8.x) and newer do bfloat16 at float16 speed without loss scaling; older GPUs
    # (Volta, Turing) have fast float16 only.
    return "mixed_bfloat16" if gpu_compute_capability[0] >= 8 else "mixed_float16"
  flags = cpu_flags() if flags is None else set(flags)
  return "mixed_bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"


@contextlib.contextmanager
def policy_scope(precision):
  """Sets Keras' global dtype policy for `precision` (resolved) and restores the old one."""
  name = resolve(precision)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(name)
  try:
    yield name
  finally:
    keras.config.set_dtype_policy(previous)


def with_config_precision(fn):
  """Decorator: runs `fn(config, ...)` under `policy_scope(config.precision)`."""
  @functools.wraps(fn)
  def wrapped(config, *args, **kwargs):
    with policy_scope(getattr(config, "precision", "float32")):
      return fn(config, *args, **kwargs)
  return wrapped


def current():
  """The name of Keras' global dtype policy now."""
  return keras.config.dtype_policy().name


def needs_loss_scaling(policy_name=None):
  return (policy_name or current()) == "mixed_float16"


def wrap_optimizer(optimizer, policy_name=None, initial_scale=2.0 ** 15):
  """`optimizer` inside Keras' dynamic `LossScaleOptimizer` under mixed_float16, else itself.

  A custom train_step must then multiply the loss by `optimizer.scale_loss` before taking
  gradients; `optimizer.apply` divides the gradients by the scale, skips the update (and
  halves the scale) when any gradient is not finite, and doubles the scale after 2,000 good
  steps.
  """
  if not needs_loss_scaling(policy_name) or isinstance(
      optimizer, keras.optimizers.LossScaleOptimizer):
    return optimizer
  return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=initial_scale)


def inner_optimizer(optimizer):
  """The optimizer a LossScaleOptimizer wraps, or `optimizer` itself."""
  return getattr(optimizer, "inner_optimizer", optimizer)


def unscaled_grad_norm(optimizer, gradients):
  """(global norm of the true gradients, weight for a running mean of it).

  Under a LossScaleOptimizer the gradients are scaled: the norm is divided by the scale, and
  a step whose scaled gradients overflowed (the optimizer skips it and halves the scale, as
  float16 training normally does a few times) gets weight 0 and a norm of 0, so a divergence
  guard on the mean does not take it for a diverged run. Otherwise: the norm, weight 1.
  """
  norm = tf.linalg.global_norm(gradients)
  if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return norm, tf.constant(1.0)
  norm = norm / tf.cast(optimizer.dynamic_scale, norm.dtype)
  finite = tf.math.is_finite(norm)
  return tf.where(finite, norm, 0.0), tf.cast(finite, tf.float32)


def to_float32(structure):
  """Casts every floating tensor of a nested structure to float32 (losses and metrics)."""
  def cast(t):
    if hasattr(t, "dtype") and tf.as_dtype(t.dtype).is_floating and t.dtype != tf.float32:
      return tf.cast(t, tf.float32)
    return t
  return tf.nest.map_structure(cast, structure)


def describe(precision):
  """One line for logs: what `precision` resolves to on this machine."""
  name = resolve(precision)
  if precision == "auto":
    return f"auto -> {name}"
  return name


def environment_hint():
  """Where the resolution of `auto` came from, for the logs."""
  found = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
  return (f"CPU bf16 flags: {', '.join(found) or 'none'}; "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}")
