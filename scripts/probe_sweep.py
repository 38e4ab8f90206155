"""Chooses the linear-probe hyper-parameters on a validation split carved out of train.

The campaign's probes (`scripts/reproduce.py --preset=cifar10`) train BatchNorm-without-affine
+ linear heads on stored, pooled features of B1..B5. Which weight decay and learning rate they
should use must not be picked on the test split, so this script holds out
`--val_examples` training images (a fixed random subset), trains the heads on the rest
for every setting in the grid, and prints validation accuracy per block and setting; with
`--test` it also prints the test accuracy of every setting (to report, never to choose).

    python scripts/probe_sweep.py --data=/tmp/cifar10 \
        --runs=/work/runs/campaign/rotation/e2e_s0,/work/runs/campaign/rotation/random_s0 \
        --weight_decays=5e-4,5e-3,5e-2 --learning_rates=0.01 --epochs=15 --test

Features are extracted once per run and kept in `--cache` (float16 .npy files).
"""

import argparse
import itertools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from psl_tf.cli import quiet  # pylint: disable=unused-import,g-bad-import-order
import numpy as np  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top

from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
from psl_tf.data import views  # pylint: disable=g-import-not-at-top
from psl_tf.evaluation import probes, transfer  # pylint: disable=g-import-not-at-top
from psl_tf.models import blocks as blocks_lib  # pylint: disable=g-import-not-at-top

BLOCKS = blocks_lib.BLOCK_NAMES


def features_of(workdir, data, cache):
  """({block: [N, D] float16} train, train labels, test, test labels) of a run, cached."""
  os.makedirs(cache, exist_ok=True)
  tag = os.path.basename(os.path.normpath(workdir))
  paths = {what: os.path.join(cache, f"{tag}_{what}.npz") for what in ("train", "test")}
  if all(os.path.exists(p) for p in paths.values()):
    out = []
    for what in ("train", "test"):
      with np.load(paths[what]) as z:
        out += [{b: z[b] for b in BLOCKS}, z["labels"]]
    return out
  run = wd.load_run(workdir)
  config = run.config
  backbone = run.build_backbone()
  backbone.trainable = False
  extract, _ = probes.feature_extractor(backbone, config.image_size)
  out = []
  for what in ("train", "test"):
    source, _ = transfer.load_labelled(f"folder:{data}", what, None, config.image_check)
    dataset = views.labelled_dataset(source, config.image_size, config.resize_to, 256,
                                     training=False)
    feats, labels = probes.extract_features(extract, dataset, source.num_examples,
                                            lambda line: print(line, flush=True), what)
    np.savez(paths[what], labels=labels, **feats)
    out += [feats, labels]
  return out


def accuracy(model, features, labels):
  scores = probes.predict_features(model, features)
  return {b: round(100.0 * float(np.mean(np.argmax(scores[b], 1) == labels)), 2)
          for b in scores}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", required=True, help="comma-separated run work directories")
  parser.add_argument("--data", required=True, help="folder with train/ and test/ splits")
  parser.add_argument("--cache", default="/tmp/probe_sweep_features")
  parser.add_argument("--weight_decays", default="5e-4,5e-3,5e-2")
  parser.add_argument("--learning_rates", default="0.01")
  parser.add_argument("--epochs", type=int, default=15)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--val_examples", type=int, default=10_000)
  parser.add_argument("--test", action="store_true", help="also report test accuracy")
  parser.add_argument("--output", help="write all numbers to this JSON file")
  args = parser.parse_args()

  grid = list(itertools.product([float(x) for x in args.learning_rates.split(",")],
                                [float(x) for x in args.weight_decays.split(",")]))
  report = {}
  for workdir in args.runs.split(","):
    name = os.path.basename(os.path.normpath(workdir))
    train, train_labels, test, test_labels = features_of(workdir, args.data, args.cache)
    order = np.random.default_rng(0).permutation(len(train_labels))
    fit_idx, val_idx = np.sort(order[args.val_examples:]), np.sort(order[:args.val_examples])
    fit = {b: v[fit_idx] for b, v in train.items()}
    val = {b: v[val_idx] for b, v in train.items()}
    report[name] = {}
    for lr, wd in grid:
      keras.utils.set_random_seed(0)
      start = time.time()
      model = probes.build_feature_heads({b: v.shape[1] for b, v in fit.items()}, 10, wd)
      history = probes.train_feature_heads(model, fit, train_labels[fit_idx], args.epochs,
                                           args.batch_size, lr)
      entry = {"train": {b: round(h[-1], 2) for b, h in history.items()},
               "val": accuracy(model, val, train_labels[val_idx])}
      if args.test:
        entry["test"] = accuracy(model, test, test_labels)
      key = f"lr={lr:g} wd={wd:g}"
      report[name][key] = entry
      print(f"{name} {key} ({time.time() - start:.0f} s)", flush=True)
      for part in ("train", "val", "test"):
        if part in entry:
          print(f"   {part:5s} " + " ".join(f"{b} {entry[part][b]:5.1f}" for b in BLOCKS),
                flush=True)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
