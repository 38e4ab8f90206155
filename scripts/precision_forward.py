r"""How far a mixed-precision forward pass of trained backbones is from the float32 one.

  python scripts/precision_forward.py --data=/tmp/cifar10 --images=512 \
      --workdirs=/work/runs/campaign/rotation/psl_s1,/work/runs/campaign/rotation/e2e_s1

Each run's last finished stage is built twice, under the float32 and under the mixed policy
(`--precision`), with the same float32 weights, and both see the same test images in
inference mode (what a PSL stage's frozen blocks do). Per block it prints the relative error
||mixed - float32|| / ||float32|| of the block's output. A few percent or less means the
features a frozen block hands to the next stage are the same in either precision, so any
difference between precisions in training comes from the training steps themselves.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from psl_tf.cli import quiet  # pylint: disable=g-import-not-at-top,wrong-import-position

tf = quiet.import_tensorflow_quietly()

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from psl_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import precision  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.data import views  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.models import blocks as blocks_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_images(folder, count, size, resize):
  """The first `count` test images of `folder` in the evaluation view (shorter side to
  `resize`, central `size` crop), the view a linear probe sees."""
  source = data.load_source(f"folder:{folder}", "test", image_check="none")
  batches = views.labelled_dataset(source, size, resize, count, training=False)
  images, _ = next(iter(batches))
  return images.numpy()


def block_outputs(run, images, policy):
  with precision.policy_scope(policy):
    backbone = run.build_backbone()
    outputs = backbone(images, training=False)
  return [np.asarray(tf.cast(outputs[name], tf.float32)) for name in blocks_lib.BLOCK_NAMES]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdirs", required=True, help="comma-separated pre-training runs")
  parser.add_argument("--data", required=True, help="image folder with a test/ split")
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--precision", default="mixed_bfloat16",
                      choices=("mixed_bfloat16", "mixed_float16"))
  args = parser.parse_args()
  keras.utils.set_random_seed(0)
  for workdir in args.workdirs.split(","):
    run = wd.load_run(workdir)
    images = test_images(args.data, args.images, run.config.image_size,
                         run.config.resize_to)
    reference = block_outputs(run, images, "float32")
    mixed = block_outputs(run, images, args.precision)
    errors = [np.linalg.norm(m - r) / np.linalg.norm(r) for m, r in zip(mixed, reference)]
    print(f"{workdir} (stage {run.stage}, {len(images)} images), {args.precision} vs float32, "
          "relative error per block: " + " ".join(
              f"{name.upper()} {100 * e:.2f} %" for name, e in zip(blocks_lib.BLOCK_NAMES,
                                                                    errors)))


if __name__ == "__main__":
  main()
