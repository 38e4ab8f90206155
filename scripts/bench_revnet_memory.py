"""Peak memory of one RevNet-50 training step with and without recomputation, per batch size.

Runs the same step in a fresh subprocess per (mode, batch size), so no run inherits another's
peak. Each child runs the step twice and reports what each call adds to memory: the CPU
allocator's peak during the call minus what was allocated before it (weights, optimizer
slots, the input batch). The second call is a training step as every later one; the first
also optimises the graph and creates oneDNN primitives, and is shown beside it. Then the
per-image increment (the slope between consecutive batch sizes, and increment / batch) with
and without `--recompute`, and their ratio.

  python scripts/bench_revnet_memory.py                     # 224 px, batches 8,16,32, factor 4
  python scripts/bench_revnet_memory.py --image_size=128 --batch_sizes=4,8
  python scripts/bench_revnet_memory.py --batch_sizes=8 --breakdown   # where the peak is

The measure is TensorFlow's allocator (`tf.config.experimental.get_memory_info('CPU:0')`):
it counts every tensor and nothing else. Its documentation says it raises on CPU; it works
here because with oneDNN on (this script asks for it unless TF_ENABLE_ONEDNN_OPTS is set;
TensorFlow's own default only on AVX-512-class x86 CPUs) the CPU allocator is oneDNN's
BFC-based one, which keeps statistics (with `TF_ENABLE_ONEDNN_OPTS=0` set
`TF_CPU_ALLOCATOR_USE_BFC=true` to keep them). The process's peak RSS over the call (VmHWM,
reset before it) is printed beside it: it is the allocator's pool, which a BFC allocator
grows when fragmentation leaves no free chunk large enough, so it exceeds the tensors' peak
by an amount that depends on the order of allocations.

`--breakdown` runs the second step with the BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC`) under the
TensorFlow profiler, replays the allocator's allocation/deallocation events, and lists the
tensors alive at the step's peak grouped by the op that made them (requested bytes; BFC's
rounding makes its own peak larger than the default allocator's).

The step is what `psl_tf.trainer.StageModel` does in an `e2e` stage: all blocks in training
mode, a linear head on pooled b5 features, softmax cross-entropy, gradients of every
backbone variable, one SGD-with-momentum update, inside one `tf.function`.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2.0 ** 20


def _status_mib(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0  # kB
  raise KeyError(field)


def _rss_mib():
  return _status_mib("VmRSS")


def _rss_peak_mib():
  return _status_mib("VmHWM")


def _reset_rss_peak():
  with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to VmRSS.
    f.write("5")


def _live_at_peak(xplane_path, top):
  """Tensors alive at the allocator's peak, from the profiler's memory events."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(xplane_path, "rb") as f:
    space.ParseFromString(f.read())
  events = []
  for plane in space.planes:
    for line in plane.lines:
      for ev in line.events:
        kind = plane.event_metadata[ev.metadata_id].name
        if kind not in ("MemoryAllocation", "MemoryDeallocation"):
          continue
        stats = {}
        for s in ev.stats:
          stats[plane.stat_metadata[s.metadata_id].name] = (
              s.str_value or (plane.stat_metadata[s.ref_value].name if s.ref_value else "")
              or s.int64_value or s.uint64_value)
        events.append((line.timestamp_ns * 1000 + ev.offset_ps, kind, stats))
  events.sort(key=lambda e: e[0])
  live, current, peak, at_peak = {}, 0, 0, {}
  for _, kind, st in events:
    if kind == "MemoryAllocation":
      live[st["addr"]] = (st.get("requested_bytes", 0), st.get("tf_op", ""), st.get("shape", ""))
      current += live[st["addr"]][0]
      if current > peak:
        peak, at_peak = current, dict(live)
    else:
      current -= live.pop(st["addr"], (0,))[0]
  groups = collections.Counter()
  for size, op, shape in at_peak.values():
    # One row per layer and op kind: drop Keras' call counters and the unit number.
    groups[(re.sub(r"_\d+(?=/|$)", "", op), shape)] += size
  return peak / MIB, [(b / MIB, op, shape) for (op, shape), b in groups.most_common(top)]


def child(args):
  """Builds the backbone, then runs one training step; prints a JSON line."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if args.breakdown:
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
  sys.path.insert(0, ROOT)
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TF: its allocator's statistics
  import psl_tf  # pylint: disable=g-import-not-at-top,unused-import
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

  def measure(profile_to=None):
    """The step's allocator increment and RSS increment, in MiB."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    _reset_rss_peak()
    rss_before = _rss_mib()
    if profile_to:
      tf.profiler.experimental.start(profile_to)
    loss = float(concrete())
    if profile_to:
      tf.profiler.experimental.stop()
    return ((tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / MIB,
            _rss_peak_mib() - rss_before, before / MIB, loss)

  # The first call also optimises the graph and creates the oneDNN primitives; its peak is
  # reported, but the per-image numbers are a training step's, the second call.
  first, rss_first, _, _ = measure()
  logdir = tempfile.mkdtemp(prefix="revnet_mem_") if args.breakdown else None
  extra, rss_extra, before, loss = measure(logdir)
  result = {"recompute": args.recompute, "batch": args.batch_size, "before_mib": before,
            "extra_mib": extra, "first_extra_mib": first, "rss_extra_mib": rss_extra,
            "rss_first_extra_mib": rss_first, "loss": loss}
  if logdir:
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    result["bfc_peak_mib"], result["live_at_peak"] = _live_at_peak(path, args.top)
  print(json.dumps(result))


def _slope(a, b, key):
  return (b[key] - a[key]) / (b["batch"] - a["batch"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_sizes", default="8,16,32")
  parser.add_argument("--filters_factor", type=int, default=4)
  parser.add_argument("--breakdown", action="store_true",
                      help="list the tensors alive at each step's peak (BFC + profiler)")
  parser.add_argument("--top", type=int, default=12, help="rows of --breakdown")
  parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  batches = [int(b) for b in args.batch_sizes.split(",")]
  results = {}
  for batch in batches:  # One process at a time: the machine's cores are shared.
    for recompute in (False, True):
      cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--batch_size={batch}",
             f"--image_size={args.image_size}", f"--filters_factor={args.filters_factor}",
             f"--top={args.top}"] + (["--recompute"] if recompute else []) + (
                 ["--breakdown"] if args.breakdown else [])
      out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
      results[recompute, batch] = json.loads(out.strip().splitlines()[-1])

  print(f"RevNet-50, filters_factor {args.filters_factor}, {args.image_size} px. MiB the step "
        "adds: TF's CPU allocator peak minus its use before the step (the second step; the "
        "first in brackets), and the process's peak RSS minus RSS before it")
  print(f"{'recompute':>9} {'batch':>5} {'before':>7} {'step adds':>9} {'per image':>9} "
        f"{'(first step)':>12} {'RSS adds':>8} {'(first)':>8}")
  for recompute in (False, True):
    for batch in batches:
      r = results[recompute, batch]
      print(f"{str(recompute):>9} {batch:5d} {r['before_mib']:7.1f} {r['extra_mib']:9.1f} "
            f"{r['extra_mib'] / batch:9.2f} {r['first_extra_mib']:12.1f} "
            f"{r['rss_extra_mib']:8.0f} {r['rss_first_extra_mib']:8.0f}")
  print("MiB per added image (slope between batch sizes), ratio recompute / plain:")
  for key, label in (("extra_mib", "allocator"), ("first_extra_mib", "allocator, first step"),
                     ("rss_extra_mib", "RSS")):
    for a, b in zip(batches, batches[1:]):
      plain, saving = (_slope(results[m, a], results[m, b], key) for m in (False, True))
      print(f"  {label:22s} batch {a:3d} -> {b:3d}: plain {plain:6.2f}  recompute "
            f"{saving:6.2f}  ratio {saving / plain:.3f}")
  for batch in batches:
    plain, saving = (results[m, batch]["extra_mib"] for m in (False, True))
    print(f"  step adds / batch at {batch:3d}: plain {plain / batch:6.2f}  recompute "
          f"{saving / batch:6.2f}  ratio {saving / plain:.3f}")
  if args.breakdown:
    for (recompute, batch), r in results.items():
      print(f"Alive at the peak, recompute={recompute}, batch {batch} (BFC peak "
            f"{r['bfc_peak_mib']:.1f} MiB requested):")
      for size, op, shape in r["live_at_peak"]:
        print(f"  {size:8.1f}  {op}  {shape}")


if __name__ == "__main__":
  main()
