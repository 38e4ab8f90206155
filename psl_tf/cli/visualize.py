r"""Draws a task ladder: what levels 1, 2 and 3 make of a few images (the paper's Fig. 1).

  python -m psl_tf.visualize --task=rotation                    # -> ladder_rotation.png
  python -m psl_tf.visualize --task=jigsaw --dataset=folder:/data/pets --output=jigsaw.png

The pictures: see `psl_tf.tasks.visualize`.
"""

import sys

from psl_tf.cli import quiet

quiet.import_tensorflow_quietly()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags

from psl_tf import data
from psl_tf import tasks as tasks_lib
from psl_tf.tasks import base
from psl_tf.tasks import visualize


def define_flags(flag_values=flags.FLAGS):
  """Defines the flags of the program (idempotent)."""
  if "images" in flag_values:
    return flag_values
  flags.DEFINE_enum("task", "rotation", sorted(tasks_lib.TASKS), "Task ladder to draw.",
                    flag_values=flag_values)
  flags.DEFINE_string("dataset", "demo", "demo, folder:PATH or a TFDS name.",
                      flag_values=flag_values)
  flags.DEFINE_string("split", "test", "Split to take the images from.", flag_values=flag_values)
  flags.DEFINE_integer("images", 2, "How many images (rows of levels each).",
                       flag_values=flag_values)
  flags.DEFINE_integer("image_size", 96, "Side the task's pipeline produces.",
                       flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the random choices.", flag_values=flag_values)
  flags.DEFINE_string("output", "", "PNG path (default: ladder_<task>.png).",
                      flag_values=flag_values)
  return flag_values


def check_output(output, task):
  """Raises ValueError (one line) unless `output` names a PNG file that can be written."""
  import os  # pylint: disable=g-import-not-at-top
  if os.path.isdir(output):
    raise ValueError(f"--output={output} is a folder; name the PNG file to write, e.g. "
                     f"--output={os.path.join(output, f'ladder_{task}.png')}")
  folder = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(folder):
    raise ValueError(f"--output={output}: the folder {folder} does not exist")


def main(argv, flag_values=None):
  """Runs the program on parsed flags (`flag_values`, default absl's global FLAGS)."""
  FLAGS = flag_values if flag_values is not None else flags.FLAGS  # pylint: disable=invalid-name
  quiet.start("psl_tf.visualize", argv)
  with quiet.one_line_errors("psl_tf.visualize"):
    if FLAGS.images < 1:
      raise ValueError(f"--images must be at least 1, got {FLAGS.images}")
    output = FLAGS.output or f"ladder_{FLAGS.task}.png"
    check_output(output, FLAGS.task)  # before the work, not after it
    task = tasks_lib.build_task(
        FLAGS.task, image_spec=base.ImageSpec(FLAGS.image_size,
                                              int(round(FLAGS.image_size * 256 / 224))))
    source = data.load_source(FLAGS.dataset, FLAGS.split)
    images = [image.numpy() for image, _ in source.images().take(FLAGS.images)]
    if not images:
      raise ValueError(f"{FLAGS.dataset} split {FLAGS.split} has no images")
  path = visualize.ladder_figure(task, images, output, FLAGS.seed)
  print(f"wrote {path}: {len(images)} image(s) x {task.num_levels} levels of {task.name}")


def run():
  """The `python -m psl_tf.visualize` program: defines the flags, parses argv, runs `main`."""
  define_flags()
  sys.modules["__main__"].__doc__ = __doc__  # --help shows this usage, not the shim's
  app.run(main, flags_parser=quiet.one_line_flags_parser("psl_tf.visualize"))


if __name__ == "__main__":
  run()
