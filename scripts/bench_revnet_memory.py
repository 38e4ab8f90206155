"""Peak memory of one RevNet-50 training step with and without recomputation.

Runs the same step in two fresh subprocesses (one per mode, so neither inherits the other's
peak) and prints each process's peak resident memory before and after the step and the ratio
of the step's extra memory. CPU only: TensorFlow's `get_memory_info` does not report CPU
devices, so the measure is the peak RSS from `resource.getrusage` (Linux reports KiB).

  python scripts/bench_revnet_memory.py                       # 224 px, batch 8, factor 4
  python scripts/bench_revnet_memory.py --image_size=128 --batch_size=16

The step is what `psl_tf.trainer.StageModel` does in an `e2e` stage: all blocks in training
mode, a linear head on pooled b5 features, softmax cross-entropy, gradients of every
backbone variable, one SGD update, inside one `tf.function`.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peak_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(args):
  """Builds the backbone, then runs one training step; prints a JSON line."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  sys.path.insert(0, ROOT)
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from psl_tf.models import revnet  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  backbone = revnet.revnet50(filters_factor=args.filters_factor, recompute=args.recompute)
  head = keras.layers.Dense(8)
  head.build((None, backbone.get_layer("b5").output.shape[-1]))
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  variables = backbone.trainable_variables + head.trainable_variables
  optimizer.build(variables)
  images = tf.random.stateless_uniform(
      [args.batch_size, args.image_size, args.image_size, 3], seed=[0, 1])
  labels = tf.random.stateless_uniform([args.batch_size], seed=[0, 2], maxval=8,
                                       dtype=tf.int32)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      features = tf.reduce_mean(backbone(images, training=True)["b5"], axis=[1, 2])
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          labels, head(features), from_logits=True))
    optimizer.apply(tape.gradient(loss, variables), variables)
    return loss

  # Trace first: graph building has its own (small) footprint that is not the step's.
  concrete = step.get_concrete_function()
  before = _peak_mib()
  loss = float(concrete())
  print(json.dumps({"recompute": args.recompute, "before_mib": before,
                    "peak_mib": _peak_mib(), "loss": loss}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--filters_factor", type=int, default=4)
  parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  results = {}
  for recompute in (False, True):
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           f"--image_size={args.image_size}", f"--batch_size={args.batch_size}",
           f"--filters_factor={args.filters_factor}"] + (["--recompute"] if recompute else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    results[recompute] = json.loads(out.strip().splitlines()[-1])
  print(f"RevNet-50, filters_factor {args.filters_factor}, {args.image_size} px, "
        f"batch {args.batch_size}, one training step (CPU, peak RSS)")
  for recompute, r in results.items():
    print(f"  recompute={str(recompute):5s}  before the step {r['before_mib']:8.0f} MiB  "
          f"peak {r['peak_mib']:8.0f} MiB  step's extra {r['peak_mib'] - r['before_mib']:8.0f} MiB"
          f"  (loss {r['loss']:.4f})")
  plain, saving = results[False], results[True]
  extra = [r["peak_mib"] - r["before_mib"] for r in (plain, saving)]
  print(f"  peak ratio recompute/plain: {saving['peak_mib'] / plain['peak_mib']:.3f}; "
        f"step's extra memory ratio: {extra[1] / extra[0]:.3f}")


if __name__ == "__main__":
  main()
