r"""Writes scikit-learn's bundled handwritten digits as an image folder (a transfer target).

  python scripts/make_digits_folder.py /tmp/digits      # then --dataset=folder:/tmp/digits

The digits (`sklearn.datasets.load_digits`: 1,797 grey 8x8 images of the digits 0-9, about 180
per class, pixel values 0..16) ship inside the scikit-learn wheel, so this needs no network. It
writes `OUT/train/<digit>/<index>.png` and `OUT/test/<digit>/<index>.png` (index: the image's
position in `load_digits`) and `OUT/manifest.json` (the settings, counts and versions):

* split: class-stratified, --test_fraction=1/3 of every class to test, drawn by --seed=0
  (`sklearn.model_selection.train_test_split`): 1,198 train, 599 test images;
* pixels: value * 255 / 16 rounded (0..16 -> 0..255), grey copied to R, G and B;
* size: 8x8 upsampled to --size=32 (CIFAR-10's side) with PIL's --interpolation=bilinear.

`--pixel_baseline` also prints what a linear classifier on the 64 raw pixel values of the same
split scores on test, to read the probes' numbers against.

Writing into a folder that already holds the same manifest does nothing; any other non-empty
folder is refused. Needs scikit-learn (pinned in requirements-reproduce.txt).
"""

import argparse
import json
import os
import sys

import numpy as np

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
SPLITS = ("train", "test")


def digits_split(test_fraction=1 / 3, seed=0):
  """{split: (images uint8 [N, 8, 8] scaled to 0..255, labels int [N], indices int [N])}."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  indices = np.arange(len(images))
  train, test = model_selection.train_test_split(
      indices, test_size=test_fraction, stratify=digits.target, random_state=seed)
  return {split: (images[np.sort(ix)], digits.target[np.sort(ix)].astype(int), np.sort(ix))
          for split, ix in zip(SPLITS, (train, test))}


def pixel_baseline(test_fraction=1 / 3, seed=0, grid=(0.01, 0.1, 1.0, 10.0)):
  """(test top-1 %, chosen C) of a linear classifier (multinomial logistic regression) on the
  64 raw pixel values of the same split: the inverse regularisation C chosen on a stratified
  10 % of train held out (seed 0), then trained on the whole train split. A reference for the
  probes, not part of the folder."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  import threadpoolctl  # pylint: disable=g-import-not-at-top  (scikit-learn's own dependency)
  split = digits_split(test_fraction, seed)
  (x_train, y_train, _), (x_test, y_test, _) = split["train"], split["test"]
  x_train = x_train.reshape(len(x_train), -1) / 255.0
  x_test = x_test.reshape(len(x_test), -1) / 255.0
  fit, val, y_fit, y_val = model_selection.train_test_split(
      x_train, y_train, test_size=0.1, stratify=y_train, random_state=0)

  def model(c):
    return linear_model.LogisticRegression(C=c, max_iter=10_000)
  # One BLAS thread: these fits take milliseconds, but a BLAS thread pool on a busy machine
  # (a training process beside it) turns them into seconds.
  with threadpoolctl.threadpool_limits(1):
    scores = {c: model(c).fit(fit, y_fit).score(val, y_val) for c in grid}
    best = max(grid, key=lambda c: scores[c])  # the first of equals: the strongest penalty
    return 100.0 * model(best).fit(x_train, y_train).score(x_test, y_test), best


def manifest(args, counts):
  """What the folder holds and how it was made (compared before writing again)."""
  import PIL  # pylint: disable=g-import-not-at-top
  import sklearn  # pylint: disable=g-import-not-at-top
  return {"source": "sklearn.datasets.load_digits", "scikit_learn": sklearn.__version__,
          "pillow": PIL.__version__, "test_fraction": round(args.test_fraction, 6),
          "seed": args.seed, "size": args.size, "interpolation": args.interpolation,
          "pixels": "round(value * 255 / 16), grey copied to RGB", "counts": counts}


def write_folder(args):
  """Writes the PNG tree and manifest.json into args.out; returns (manifest, written)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  resample = getattr(Image.Resampling, args.interpolation.upper())
  split = digits_split(args.test_fraction, args.seed)
  counts = {name: {str(c): int((labels == c).sum()) for c in range(10)}
            for name, (_, labels, _) in split.items()}
  wanted = manifest(args, counts)
  path = os.path.join(args.out, "manifest.json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) == wanted:
        return wanted, False
  if os.path.isdir(args.out) and os.listdir(args.out):
    raise SystemExit(f"make_digits_folder: {args.out} is not empty and holds no matching "
                     "manifest.json; give an empty or new folder")
  for name, (images, labels, indices) in split.items():
    for c in range(10):
      os.makedirs(os.path.join(args.out, name, str(c)), exist_ok=True)
    for image, label, index in zip(images, labels, indices):
      rgb = np.repeat(image[:, :, None], 3, axis=2)
      Image.fromarray(rgb, "RGB").resize((args.size, args.size), resample).save(
          os.path.join(args.out, name, str(label), f"{index:04d}.png"))
  with open(path, "w") as f:
    json.dump(wanted, f, indent=2, sort_keys=True)
  return wanted, True


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("out", help="folder to write (new or empty)")
  parser.add_argument("--test_fraction", type=float, default=1 / 3,
                      help="share of every class that goes to test/")
  parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
  parser.add_argument("--size", type=int, default=32, help="side of the written images (px)")
  parser.add_argument("--interpolation", default="bilinear", choices=INTERPOLATIONS,
                      help="PIL resampling filter of the 8x8 -> size upsampling")
  parser.add_argument("--pixel_baseline", action="store_true",
                      help="also print the test top-1 of a linear classifier on the 64 raw "
                      "pixel values of the same split (a reference for the probes)")
  args = parser.parse_args(argv)
  if not 0.0 < args.test_fraction < 1.0:
    parser.error(f"--test_fraction={args.test_fraction} must be between 0 and 1")
  if args.size < 8:
    parser.error(f"--size={args.size} must be at least 8 (the digits' own side)")
  try:
    import sklearn  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    parser.error("needs scikit-learn: pip install -r requirements-reproduce.txt")
  held, written = write_folder(args)
  for name, per_class in held["counts"].items():
    print(f"{name}: {sum(per_class.values())} images "
          f"({', '.join(f'{c}: {n}' for c, n in per_class.items())})")
  print(f"{'wrote' if written else 'already there, nothing written:'} {args.out} "
        f"({args.size}x{args.size} px, {args.interpolation})")
  if args.pixel_baseline:
    top1, c = pixel_baseline(args.test_fraction, args.seed)
    print(f"pixel baseline: logistic regression on the 64 raw pixel values (C={c:g}, chosen "
          f"on 10 % of train held out): test top-1 {top1:.1f} %")


if __name__ == "__main__":
  sys.exit(main())
