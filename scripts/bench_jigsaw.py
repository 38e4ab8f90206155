r"""Measures the jigsaw ladder's costs side by side in one run.

1. The time to build the largest permutation set cold (the greedy selection itself, never the
   disk cache).
2. The tile pipeline's images (puzzles) per second on this machine's cores: the `tf.data`
   input_fn of a real run (shuffle, decode, crop, 9 tiles, permutation, batch) on --dataset.
3. A jigsaw train step's consumption rate, in images (puzzles) per second, for --backbone at
   --batch_size on the given stages, with batches held in memory so only the step is timed.

The ratio pipeline / step says whether the input keeps up with training (>= 1) on these cores.

  python scripts/bench_jigsaw.py                             # ResNet-50, paper geometry
  python scripts/bench_jigsaw.py --backbone=cifar_resnet --image_size=96 --jigsaw_tile=0
"""

import os
import time

from absl import app
from absl import flags
import psl_tf  # pylint: disable=unused-import  # before TensorFlow: asks for oneDNN
import keras
import numpy as np
import tensorflow as tf

from psl_tf.data import benchmark
from psl_tf import data
from psl_tf import optim
from psl_tf import stages as stages_lib
from psl_tf import trainer
from psl_tf.models import build_backbone
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import jigsaw
from psl_tf.tasks import permutations

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "demo", "Source of the pipeline images (demo, folder:PATH, TFDS).")
flags.DEFINE_string("backbone", "resnet50", "Backbone of the timed train step.")
flags.DEFINE_integer("depth", 18, "cifar_resnet depth.")
flags.DEFINE_integer("width", 32, "cifar_resnet width.")
flags.DEFINE_integer("image_size", 224, "Whole-image size; tile sizes left at 0 scale from it.")
flags.DEFINE_integer("batch_size", 32, "Puzzles per step (and per pipeline batch).")
flags.DEFINE_list("jigsaw_sizes", ["500", "1000", "2000"], "Permutation set sizes.")
flags.DEFINE_integer("jigsaw_resize", 256, "Shorter side before the crop (0: scaled).")
flags.DEFINE_integer("jigsaw_crop", 225, "Crop side (0: scaled).")
flags.DEFINE_integer("jigsaw_cell", 75, "Cell side (0: scaled).")
flags.DEFINE_integer("jigsaw_tile", 64, "Tile side (0: scaled).")
flags.DEFINE_list("stages", ["1", "3"], "Which psl stages to time (1 = B1-B3, 3 = B3-B5).")
flags.DEFINE_integer("pipeline_batches", 20, "Timed pipeline batches (after 3 warm-up).")
flags.DEFINE_integer("steps", 4, "Timed train steps per stage (after 2 warm-up).")


def time_cold_build(size):
  start, cpu_start = time.perf_counter(), time.process_time()
  sequence = permutations.greedy_sequence(size, seed=0, criterion="average")
  elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  average, minimum = permutations.hamming_stats(sequence)
  return elapsed, cpu, average, minimum


def step_rate(task, stage, batch_size, steps):
  keras.utils.set_random_seed(0)
  kwargs = {"depth": FLAGS.depth, "width": FLAGS.width} if FLAGS.backbone == "cifar_resnet" else {}
  backbone = build_backbone(FLAGS.backbone, **kwargs)
  head = trainer.build_stage_head(backbone, task, stage)
  model = trainer.StageModel(backbone, task, stage, head)
  model.compile(optimizer=optim.build_optimizer("sgd", 0.01, 0.9))
  rng = np.random.default_rng(0)
  x = tf.constant(rng.uniform(size=(batch_size, 9, task.tile, task.tile, 3)), tf.float32)
  y = tf.constant(rng.integers(0, task.num_classes(stage.level), batch_size), tf.int32)
  return benchmark.fit_rate(model, x, y, steps)


def main(argv):
  del argv
  sizes = [int(s) for s in FLAGS.jigsaw_sizes]
  print(f"machine: {os.cpu_count()} cores visible, TF {tf.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}")
  build_s, cpu_s, average, minimum = time_cold_build(sizes[-1])
  print(f"permutation set of {sizes[-1]} (average criterion), cold build: {build_s:.2f} s wall, "
        f"{cpu_s:.2f} s CPU; "
        f"Hamming avg {average:.4f} min {minimum}")

  task = jigsaw.JigsawTask(ImageSpec(FLAGS.image_size), sizes=sizes,
                           resize=FLAGS.jigsaw_resize, crop=FLAGS.jigsaw_crop,
                           cell=FLAGS.jigsaw_cell, tile=FLAGS.jigsaw_tile)
  print(f"geometry: resize {task.resize}, crop {task.crop}, cell {task.cell}, tile {task.tile}; "
        f"batch {FLAGS.batch_size} puzzles = {9 * FLAGS.batch_size} tiles")
  source = data.load_source(FLAGS.dataset)
  pipe, batch = benchmark.pipeline_rate(source, task.example_fn(3, training=True),
                                        FLAGS.batch_size, FLAGS.pipeline_batches)
  shape = tuple(batch.shape)
  print(f"tile pipeline ({FLAGS.dataset}): {pipe:.1f} images/s, batches of {shape}")
  for index in (int(s) for s in FLAGS.stages):
    stage = stages_lib.make_stages("psl", 3)[index - 1]
    step = step_rate(task, stage, FLAGS.batch_size, FLAGS.steps)
    print(f"train step, {FLAGS.backbone} stage {index} (B{stage.first}-B{stage.last}, level "
          f"{stage.level}, {task.num_classes(stage.level)} classes): {step:.1f} images/s; "
          f"pipeline / step = {pipe / step:.2f}")


if __name__ == "__main__":
  app.run(main)
