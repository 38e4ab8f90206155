r"""Wall time of the linear probes: heads on stored features vs heads on augmented images.

  python scripts/bench_probes.py --data=/tmp/cifar10 --epochs=10

On one backbone (a run's last stage with --workdir, else an untrained cifar_resnet), in one
process:

* `features`: the whole `--probe_inputs=features` protocol, timed end to end: one compiled
  pass over the training and test splits, `--epochs` passes of the five heads over the stored
  features, the test scores;
* `images`: `--image_steps` steps of the `--probe_inputs=images` protocol (backbone on a random
  crop + flip of every batch, five heads), timed after warm-up and scaled to `--epochs` passes
  over the training split, plus one centre-crop pass over the test split (timed);
* `e2e epoch`: `--train_steps` rotation e2e pre-training steps (batch 128, real pipeline),
  scaled to one pass over the training split: the unit a reader compares the probes with.

Prints the three wall times and their ratios. The machine is shared; ratios from one run are
the numbers to quote.

  python scripts/bench_probes.py --data=/tmp/cifar10 --compare_heads --rounds=3

times only the heads' training on stored features (the campaign's grid of four weight
decays, 90 % of the training split), one timed epoch per arm per round, interleaved:
`separate` is the previous implementation (Keras' BatchNormalization, one Dense layer per head)
and `library` is `probes.build_feature_heads` (the fused-kernel `FeatureNorm`, a block's heads
side by side in one Dense layer). Each round trains each arm for two epochs and times the
second (the first includes tracing).
Prints the seconds per epoch of each, their ratio and both arms' training accuracies (the arms
start from different draws of the same initialisation, so these agree only to probe noise).
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from psl_tf.cli import quiet  # pylint: disable=g-import-not-at-top,wrong-import-position

tf = quiet.import_tensorflow_quietly()

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from psl_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.evaluation import probes  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import stages  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.data import views  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="/tmp/cifar10", help="image folder with train/ test/")
  parser.add_argument("--workdir", default=None, help="a run to probe (default: untrained)")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--image_steps", type=int, default=40)
  parser.add_argument("--train_steps", type=int, default=40)
  parser.add_argument("--compare_heads", action="store_true",
                      help="only the A/B of the feature heads' implementation (see above)")
  parser.add_argument("--rounds", type=int, default=3, help="--compare_heads rounds")
  return parser.parse_args()


def backbone_of(args):
  if args.workdir:
    return wd.load_run(args.workdir).build_backbone()
  keras.utils.set_random_seed(0)
  return models.build_backbone("cifar_resnet", depth=10, width=16)


def separate_heads(sizes, num_classes, weight_decays):
  """The previous `build_feature_heads`: Keras' BatchNormalization and one Dense per head."""
  inputs, outputs = {}, {}
  for name, size in sizes.items():
    inputs[name] = keras.Input((size,), name=name)
    x = keras.layers.BatchNormalization(center=False, scale=False)(inputs[name])
    for wd in weight_decays:
      outputs[probes.head_name(name, wd, True)] = keras.layers.Dense(
          num_classes, kernel_regularizer=keras.regularizers.L2(wd / 2))(x)
  return keras.Model(inputs, outputs)


def compare_heads(args, train, size, resize):
  """Seconds per epoch of the feature heads: previous implementation vs the library's."""
  extract, _ = probes.feature_extractor(backbone_of(args), size)
  features, labels = probes.extract_features(
      extract, views.labelled_dataset(train, size, resize, 256, training=False),
      train.num_examples)
  sizes = {k: v.shape[1] for k, v in features.items()}
  rows = np.random.default_rng(0).permutation(len(labels))[len(labels) // 10:]
  decays = (5e-4, 5e-3, 5e-2, 5e-1)
  arms = {"separate": separate_heads(sizes, train.num_classes, decays),
          "library": probes.build_feature_heads(sizes, train.num_classes, decays)}
  seconds = {arm: [] for arm in arms}
  last = {}
  for _ in range(args.rounds):
    for arm, model in arms.items():
      # Two epochs per call; the second one's time (between the end-of-epoch log calls)
      # leaves out the tracing that every call starts with.
      ends = []
      last[arm] = probes.train_feature_heads(model, features, labels, 2, args.batch_size,
                                             rows=rows,
                                             log=lambda _: ends.append(time.perf_counter()))
      seconds[arm].append(ends[1] - ends[0])
  for arm in arms:
    print(f"{arm}: " + " ".join(f"{s:.1f}" for s in seconds[arm]) + " s per epoch; last "
          "epoch's train top-1 " + " ".join(f"{h} {v[-1]:.1f}" for h, v in last[arm].items()
                                            if h.endswith("@wd=0.05")))
  ratio = sum(seconds["separate"]) / sum(seconds["library"])
  print(f"ratio separate / library = {ratio:.2f}x per epoch of the heads")


def main():
  args = parse_args()
  size, resize = args.image_size, round(args.image_size * 256 / 224)
  folder = f"folder:{args.data}"
  train = data.load_source(folder, "train", None, "none")
  test = data.load_source(folder, "test", None, "none")
  n_train = train.num_examples
  if args.compare_heads:
    compare_heads(args, train, size, resize)
    return

  # 1. The stored-features protocol, end to end.
  backbone = backbone_of(args)
  start = time.perf_counter()
  results, _ = probes.linear_probe_on_features(
      backbone, views.labelled_dataset(train, size, resize, 256, training=False),
      views.labelled_dataset(test, size, resize, 256, training=False), train.num_classes,
      size, args.epochs, args.batch_size, learning_rate=0.01, num_train=n_train,
      num_eval=test.num_examples)
  features_s = time.perf_counter() - start
  print(f"features: {features_s:.0f} s for {args.epochs} epochs on {n_train} images; top-1 "
        + " ".join(f"{k} {v['top1']:.1f}" for k, v in results.items()), flush=True)

  # 2. The augmented-images protocol: timed steps, scaled to the same epochs.
  backbone = backbone_of(args)
  model, _ = probes.build_probe_model(backbone, size, train.num_classes)
  steps_per_epoch = math.ceil(n_train / args.batch_size)
  dataset = views.labelled_dataset(train, size, resize, args.batch_size, training=True)
  probes.train_probes(model, dataset, 1, 3)  # compile and warm up
  start = time.perf_counter()
  model.fit(dataset.map(lambda x, y: (x, {k: y for k in model.output})), epochs=1,
            steps_per_epoch=args.image_steps, verbose=0)
  per_step = (time.perf_counter() - start) / args.image_steps
  start = time.perf_counter()
  probes.evaluate_probes(model, views.labelled_dataset(test, size, resize, 256, training=False))
  eval_s = time.perf_counter() - start
  images_s = per_step * steps_per_epoch * args.epochs + eval_s
  print(f"images: {per_step * 1000:.0f} ms/step x {steps_per_epoch} steps x {args.epochs} "
        f"epochs + {eval_s:.0f} s test pass = {images_s:.0f} s (scaled from {args.image_steps} "
        "steps)", flush=True)

  # 3. One e2e rotation pre-training epoch at the campaign's batch of 128.
  backbone = backbone_of(args)
  task = tasks.build_task("rotation", image_spec=tasks.ImageSpec(size, resize))
  stage = stages.make_stages("e2e", 3)[0]
  head = trainer.build_stage_head(backbone, task, stage)
  stage_model = trainer.StageModel(backbone, task, stage, head, weight_decay=5e-4)
  stage_model.compile(optimizer=optim.build_optimizer("sgd", 0.1, 0.9))
  pipeline = data.make_input_fn(train, task.example_fn(stage.level, True), 128)()
  stage_model.fit(pipeline, epochs=1, steps_per_epoch=3, verbose=0)
  start = time.perf_counter()
  stage_model.fit(pipeline, epochs=1, steps_per_epoch=args.train_steps, verbose=0)
  epoch_s = (time.perf_counter() - start) / args.train_steps * math.ceil(n_train / 128)
  print(f"e2e pre-training epoch: {epoch_s:.0f} s (scaled from {args.train_steps} steps)")
  print(f"ratios: images / features = {images_s / features_s:.1f}x; features probe = "
        f"{features_s / epoch_s:.2f} e2e pre-training epochs; images probe = "
        f"{images_s / epoch_s:.2f} e2e pre-training epochs")


if __name__ == "__main__":
  main()
