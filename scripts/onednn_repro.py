r"""The oneDNN crash with one TensorFlow op: Conv2DBackpropFilter of a 1x1 stride-2 convolution.

  python scripts/onednn_repro.py
  python scripts/onednn_repro.py --channels=8,16 --batches=3 --sizes=32 --kernels=1:2

Each shape is computed in two child processes, one with TF_ENABLE_ONEDNN_OPTS=1 and one with
0 (TensorFlow reads the variable once, at import, so the setting cannot change inside a
process): the weight gradient of a convolution with `channels` input and 2x`channels` output
channels, `batch` images of `size` x `size`, 'SAME' padding, from fixed random inputs, the
raw op only (no Keras, no psl_tf). A child that dies is reported with its signal (SIGSEGV,
SIGABRT: heap corruption); when both finish, the largest difference of the two gradients
relative to the largest gradient is printed, so a wrong gradient that does not crash shows too.
Nothing is timed. The last line counts the crashes inside and outside the shapes psl_tf
refuses (`psl_tf.guards.onednn_unsafe_convolutions`: kernel 1x1, stride 2, fewer than 16 input
channels).

Measured on TensorFlow 2.21.0, a 2-core Xeon with AVX-512 and AMX: docs/RELIABILITY.md.
"""

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile


def child(args):
  """Runs in a subprocess with TF_ENABLE_ONEDNN_OPTS already set by the parent."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from tensorflow.python.util import _pywrap_util_port
  # pylint: enable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal((args.batch, args.size, args.size, args.channel),
                                      dtype=np.float32))
  shape = (args.kernel, args.kernel, args.channel, 2 * args.channel)
  out = tf.nn.conv2d(x, tf.zeros(shape), args.stride, "SAME").shape
  dy = tf.constant(rng.standard_normal(out, dtype=np.float32))
  grad = tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=shape, out_backprop=dy, strides=[1, args.stride, args.stride, 1],
      padding="SAME"))
  for _ in range(3):  # the corruption does not always end the process at the first call
    result = grad(x, dy).numpy()
  np.save(args.out, result)
  print("onednn", bool(_pywrap_util_port.IsMklEnabled()))


def _ints(text):
  return [int(v) for v in text.split(",") if v]


def _outcome(returncode):
  if returncode == 0:
    return "ok"
  if returncode < 0:
    return signal.Signals(-returncode).name
  return f"exit {returncode}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--channels", type=_ints, default=[3, 8, 15, 16],
                      help="input channels (output: twice as many)")
  parser.add_argument("--batches", type=_ints, default=[3, 4])
  parser.add_argument("--sizes", type=_ints, default=[32, 64], help="image side, pixels")
  parser.add_argument("--kernels", default="1:2,3:2",
                      help="kernel:stride pairs, comma-separated")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  for name in ("batch", "size", "channel", "kernel", "stride"):
    parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return

  # pylint: disable=g-import-not-at-top
  import numpy as np
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from psl_tf.guards import ONEDNN_MIN_INPUT_CHANNELS
  # pylint: enable=g-import-not-at-top
  kernels = [tuple(int(v) for v in pair.split(":")) for pair in args.kernels.split(",")]
  print("| kernel | stride | input channels | batch | size | oneDNN on | oneDNN off "
        "| max relative difference |")
  print("|---:|---:|---:|---:|---:|---|---|---:|")
  crashes = {True: [0, 0], False: [0, 0]}  # refused by psl_tf? -> [crashed, shapes]
  with tempfile.TemporaryDirectory() as tmp:
    for (kernel, stride), channel, batch, size in itertools.product(
        kernels, args.channels, args.batches, args.sizes):
      outcomes, files = {}, {}
      for setting in ("1", "0"):
        files[setting] = os.path.join(tmp, f"g{setting}.npy")
        if os.path.exists(files[setting]):
          os.remove(files[setting])
        run = subprocess.run(
            [sys.executable, __file__, "--child", f"--batch={batch}", f"--size={size}",
             f"--channel={channel}", f"--kernel={kernel}", f"--stride={stride}",
             f"--out={files[setting]}"],
            env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting), capture_output=True,
            text=True, check=False)
        outcomes[setting] = _outcome(run.returncode)
        if run.returncode == 0 and f"onednn {setting == '1'}" not in run.stdout:
          sys.exit(f"onednn_repro: TF_ENABLE_ONEDNN_OPTS={setting} did not set oneDNN so "
                   f"({run.stdout.strip()}); this TensorFlow build decides it otherwise")
      difference = "–"
      if outcomes["1"] == outcomes["0"] == "ok":
        on, off = np.load(files["1"]), np.load(files["0"])
        difference = f"{np.max(np.abs(on - off)) / max(np.max(np.abs(off)), 1e-30):.1e}"
      refused = kernel == 1 and stride == 2 and channel < ONEDNN_MIN_INPUT_CHANNELS
      crashes[refused][0] += outcomes["1"] != "ok"
      crashes[refused][1] += 1
      print(f"| {kernel}x{kernel} | {stride} | {channel} | {batch} | {size} | {outcomes['1']} "
            f"| {outcomes['0']} | {difference} |", flush=True)
  print(f"\noneDNN on crashed {crashes[True][0]} of the {crashes[True][1]} shapes psl_tf refuses "
        f"(1x1, stride 2, < {ONEDNN_MIN_INPUT_CHANNELS} input channels) and {crashes[False][0]} of the "
        f"{crashes[False][1]} others.")


if __name__ == "__main__":
  main()
