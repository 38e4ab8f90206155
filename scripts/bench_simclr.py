r"""Measures SimCLR PSL's train steps beside its augmentation pipeline, in one run.

For each psl stage k (S1 = B1-B3 on T1, S2 = B2-B4 on T2, S3 = B3-B5 on T3):

1. the augmentation pipeline's rate on this machine's cores: the `tf.data` input_fn of a real
   run (shuffle, decode, two views under T_k, batch; the batched views when --dataset is held
   in memory, as `demo` is) on --dataset, in images per second (one image = one pair of views);
2. the stage's train step (frozen blocks, stage blocks on 2N views, projection head, NT-Xent,
   LARS), with one batch held in memory so only the step is timed, in images per second.

The ratio pipeline / step says whether the input keeps up with training (>= 1) on these cores.
Stages run one after another, pipeline then step, so both numbers of a row see the same load.

  python scripts/bench_simclr.py                          # cifar_resnet-10 w16, 32 px, batch 64
  python scripts/bench_simclr.py --backbone=resnet50 --image_size=224 --batch_size=32
"""

import os

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
from psl_tf.tasks import simclr

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "demo", "Source of the pipeline images (demo, folder:PATH, TFDS).")
flags.DEFINE_string("backbone", "cifar_resnet", "Backbone of the timed train step.")
flags.DEFINE_integer("depth", 10, "cifar_resnet depth.")
flags.DEFINE_integer("width", 16, "cifar_resnet width.")
flags.DEFINE_integer("image_size", 32, "Side of each view.")
flags.DEFINE_integer("batch_size", 64, "Images per step (2 x batch views) and per pipeline batch.")
flags.DEFINE_integer("head_hidden", 0, "Projection MLP hidden width (0: feature width).")
flags.DEFINE_list("stages", ["1", "2", "3"], "Which psl stages to time.")
flags.DEFINE_integer("pipeline_batches", 20, "Timed pipeline batches (after 3 warm-up).")
flags.DEFINE_integer("steps", 10, "Timed train steps per stage (after 2 warm-up).")


def step_rate(task, stage, batch, steps):
  """Images per second of the stage's train step on a batch held in memory."""
  keras.utils.set_random_seed(0)
  kwargs = {"depth": FLAGS.depth, "width": FLAGS.width} if FLAGS.backbone == "cifar_resnet" else {}
  backbone = build_backbone(FLAGS.backbone, **kwargs)
  head = trainer.build_stage_head(backbone, task, stage)
  optimizer = optim.build_optimizer("lars", 0.3, 0.9, weight_decay=1e-6)
  model = trainer.StageModel(backbone, task, stage, head, weight_decay=0.0)
  model.compile(optimizer=optimizer)
  return benchmark.fit_rate(model, batch, tf.zeros([batch.shape[0]], tf.int32), steps)


def main(argv):
  del argv
  print(f"machine: {os.cpu_count()} cores visible, TF {tf.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}")
  task = simclr.SimCLRTask(ImageSpec(FLAGS.image_size), head_hidden=FLAGS.head_hidden)
  size = f"depth {FLAGS.depth}, width {FLAGS.width}" if FLAGS.backbone == "cifar_resnet" else ""
  print(f"backbone {FLAGS.backbone} {size}; views {FLAGS.image_size}x{FLAGS.image_size}; "
        f"batch {FLAGS.batch_size} images = {2 * FLAGS.batch_size} views; source {FLAGS.dataset}")
  source = data.load_source(FLAGS.dataset)
  for index in (int(s) for s in FLAGS.stages):
    stage = stages_lib.make_stages("psl", 3)[index - 1]
    pipe, batch = benchmark.pipeline_rate(source, task.example_fn(stage.level, training=True),
                                          FLAGS.batch_size, FLAGS.pipeline_batches,
                                          batch_fn=task.batch_fn(stage.level, training=True))
    step = step_rate(task, stage, batch, FLAGS.steps)
    print(f"stage {index} (train B{stage.first}-B{stage.last}, {task.describe_level(stage.level)}): "
          f"pipeline {pipe:.1f} images/s, train step {step:.1f} images/s, "
          f"pipeline / step = {pipe / step:.2f}")


if __name__ == "__main__":
  app.run(main)
