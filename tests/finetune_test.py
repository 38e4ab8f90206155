"""Label subsets for semi-supervised fine-tuning, and fine-tuning itself."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import data
from psl_tf.evaluation import finetune
from psl_tf.models import build_backbone


def _labels():
  # 10 classes of unequal sizes (100..190 images), shuffled.
  labels = np.concatenate([np.full(100 + 10 * c, c) for c in range(10)])
  return np.random.default_rng(3).permutation(labels)


@pytest.mark.parametrize("fraction", [0.01, 0.1])
def test_subsets_are_class_balanced_and_seeded(fraction):
  labels = _labels()
  subset = finetune.balanced_subset(labels, fraction, seed=7)
  counts = np.bincount(labels[subset], minlength=10)
  expected = max(1, round(fraction * len(labels) / 10))
  assert counts.tolist() == [expected] * 10
  assert len(set(subset.tolist())) == len(subset)
  np.testing.assert_array_equal(subset, finetune.balanced_subset(labels, fraction, seed=7))
  assert not np.array_equal(subset, finetune.balanced_subset(labels, fraction, seed=8))


def test_bad_fraction_is_a_clear_error():
  with pytest.raises(ValueError, match="fraction"):
    finetune.balanced_subset([0, 1], 0.0)


def test_subset_from_id_file(tmp_path):
  path = tmp_path / "ids.txt"
  path.write_text("# SimCLR-style list\nb.jpg\n\nd.jpg  # comment\nzzz.jpg\n")
  ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
  np.testing.assert_array_equal(finetune.subset_from_ids(ids, finetune.read_id_file(str(path))),
                                [1, 3])
  with pytest.raises(ValueError, match="none of"):
    finetune.subset_from_ids(ids, ["x.jpg"])
  with pytest.raises(ValueError, match="does not exist"):
    finetune.read_id_file(str(tmp_path / "missing.txt"))


def test_subset_source_on_demo_and_folder(tmp_path):
  source = data.load_source("demo", "test")
  labels, ids = finetune.source_labels_and_ids(source)
  assert len(labels) == source.num_examples and ids[:2] == ["0", "1"]
  chosen = finetune.balanced_subset(labels, 0.1, seed=0)
  small = finetune.subset_source(source, chosen)
  got = [int(label) for _, label in small.images()]
  assert got == labels[chosen].tolist()
  assert small.num_examples == len(chosen)
  # Folder sources use file names as ids.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for cls in ("cat", "dog"):
    (tmp_path / cls).mkdir()
    for i in range(2):
      Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / cls / f"{cls}{i}.png")
  folder = data.load_source(f"folder:{tmp_path}", "train")
  labels, ids = finetune.source_labels_and_ids(folder)
  # Folder sources interleave classes in a fixed order, so compare (id, label) pairs.
  assert sorted(zip(ids, labels.tolist())) == [("cat0.png", 0), ("cat1.png", 0), ("dog0.png", 1),
                                               ("dog1.png", 1)]


def test_finetune_updates_backbone_and_learns_toy():
  keras.utils.set_random_seed(0)
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  before = [np.array(v) for v in backbone.trainable_weights]
  rng = np.random.default_rng(0)
  labels = np.arange(64) % 2
  images = np.where(labels[:, None, None, None] == 0, [0.9, 0.2, 0.2], [0.2, 0.2, 0.9])
  images = np.clip(images + rng.normal(0, 0.05, (64, 16, 16, 3)), 0, 1).astype(np.float32)
  train = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(16)
  test = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
  result = finetune.finetune(backbone, train, test, 2, 16, epochs=2, steps_per_epoch=8,
                             learning_rate=0.05, lr_step_split="1")
  assert result["top1"] >= 90.0 and result["top5"] == 100.0
  after = [np.array(v) for v in backbone.trainable_weights]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
