r"""High-frequency energy of the rotation ladder's images, per angle (the 45-degree blur cue).

  python scripts/rotation_blur.py --data=/tmp/cifar10 --images=300

Every angle of R3 is applied to the same test images through the task's own view
(`RotationTask.rotated_view`, the evaluation centre crop), and the mean absolute Laplacian of
the grey image is printed per angle and per family (multiples of 90 degrees vs the 45-degree
family). Equal numbers mean blur cannot tell the families apart.
"""

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from psl_tf.cli import quiet  # pylint: disable=g-import-not-at-top,wrong-import-position

tf = quiet.import_tensorflow_quietly()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from psl_tf.tasks import ImageSpec  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.data import images as image_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.tasks import rotation  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="/tmp/cifar10", help="folder with test/<class>/*.jpg")
  parser.add_argument("--images", type=int, default=300)
  parser.add_argument("--image_size", type=int, default=32)
  args = parser.parse_args()
  files = sorted(glob.glob(os.path.join(args.data, "test", "*", "*")))
  files = files[::max(1, len(files) // args.images)][:args.images]
  resize = round(args.image_size * 256 / 224)
  task = rotation.RotationTask(ImageSpec(args.image_size, resize))
  laplacian = tf.constant([[0, 1, 0], [1, -4, 1], [0, 1, 0]], tf.float32)[:, :, None, None]
  energy = {a: [] for a in rotation.ANGLES}
  for path in files:
    image = image_lib.to_float(tf.io.decode_image(tf.io.read_file(path), channels=3,
                                             expand_animations=False))
    square = image_lib.center_crop(image_lib.resize_shorter_side(image, resize), resize)
    for angle in rotation.ANGLES:
      gray = tf.reduce_mean(task.rotated_view(square, angle), -1, keepdims=True)[None]
      energy[angle].append(float(tf.reduce_mean(tf.abs(tf.nn.conv2d(gray, laplacian, 1,
                                                                      "VALID")))))
  means = {a: float(np.mean(v)) for a, v in energy.items()}
  print(f"{len(files)} images, {args.image_size} px; mean |Laplacian| per angle:")
  print("  " + "  ".join(f"{a}°: {means[a]:.4f}" for a in sorted(means)))
  right = np.mean([means[a] for a in (0, 90, 180, 270)])
  diagonal = np.mean([means[a] for a in (45, 135, 225, 315)])
  print(f"90° family {right:.4f}, 45° family {diagonal:.4f}, ratio {diagonal / right:.3f}; "
        f"largest / smallest angle {max(means.values()) / min(means.values()):.3f}")


if __name__ == "__main__":
  main()
