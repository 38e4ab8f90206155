"""Image folders (issue 28, item 2): labels come from the training split's class folders and
every other split is mapped to them by name; folders that are not classes are ignored.

Each test backs one row of docs/RELIABILITY.md.
"""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from psl_tf import data


def _tree(root, splits):
  """`splits`: {split: {class: number of images}}; image i of class c has pixel value 10 * i."""
  for split, classes in splits.items():
    for name, count in classes.items():
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(count):
        Image.fromarray(np.full((6, 6, 3), 10 * i, np.uint8)).save(
            os.path.join(root, split, name, f"{i}.png"))


def _labels_by_class(source):
  found = {}
  for path, label in source.elements.as_numpy_iterator():
    found.setdefault(os.path.basename(os.path.dirname(path.decode())), set()).add(int(label))
  return found


def test_a_class_missing_from_test_keeps_the_training_labels(tmp_path):
  # Numbered per split, test's only class `dog` was label 0 (train's `cat`): a probe that is
  # always right scored 0 % on it, 50 % on a two-class test set.
  _tree(str(tmp_path), {"train": {"cat": 3, "dog": 3}, "test": {"dog": 2}})
  train = data.load_source(f"folder:{tmp_path}", "train")
  test = data.load_source(f"folder:{tmp_path}", "test")
  assert _labels_by_class(train) == {"cat": {0}, "dog": {1}}
  assert _labels_by_class(test) == {"dog": {1}}
  assert test.num_classes == train.num_classes == 2


def test_a_test_class_unknown_to_train_is_one_error_before_any_work(tmp_path):
  # It ended in an IndexError after every probe had trained.
  _tree(str(tmp_path), {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1, "emu": 1}})
  with pytest.raises(data.DataError, match=r"class folder\(s\) the training split .* emu"):
    data.load_source(f"folder:{tmp_path}", "test")
  # The held-out split of a pre-training run is opened when the run is planned, before any
  # model is built: the same error comes there.
  with pytest.raises(data.DataError, match="emu"):
    data.load_heldout_source(f"folder:{tmp_path}")


def test_a_split_without_class_folders_next_to_a_labelled_train_split_is_an_error(tmp_path):
  # Its images were all label 0: scored against the first class.
  _tree(str(tmp_path), {"train": {"cat": 2, "dog": 2}})
  os.makedirs(tmp_path / "test")
  Image.new("RGB", (6, 6)).save(tmp_path / "test" / "x.png")
  with pytest.raises(data.DataError, match="has no class folders while the training split"):
    data.load_source(f"folder:{tmp_path}", "test")


def test_hidden_folders_and_macosx_are_not_classes_and_are_counted(tmp_path, caplog):
  # A `__MACOSX/` (unzipped on a Mac) or `.ipynb_checkpoints/` became a class: every block
  # then scored 0.0 %.
  _tree(str(tmp_path), {"train": {"cat": 2, "dog": 2, "__MACOSX": 2, ".ipynb_checkpoints": 1},
                        "test": {"cat": 1, "__MACOSX": 1}})
  open(tmp_path / "train" / "cat" / "._0.png", "wb").close()  # AppleDouble next to an image
  os.makedirs(tmp_path / "train" / "dog" / ".thumbs")
  Image.new("RGB", (4, 4)).save(tmp_path / "train" / "dog" / ".thumbs" / "t.png")
  with caplog.at_level(logging.WARNING):
    train = data.load_source(f"folder:{tmp_path}", "train")
    test = data.load_source(f"folder:{tmp_path}", "test")
  assert train.num_classes == 2 and train.num_examples == 4 and train.skipped == 0
  assert _labels_by_class(train) == {"cat": {0}, "dog": {1}}
  assert _labels_by_class(test) == {"cat": {0}}
  assert "ignored 2 folder(s) that are not classes" in caplog.text
  assert "__MACOSX" in caplog.text and ".ipynb_checkpoints" in caplog.text
  assert "ignored 1 hidden file(s)" in caplog.text


def test_a_symlink_loop_at_class_level_is_not_a_class(tmp_path):
  _tree(str(tmp_path), {"train": {"cat": 2, "dog": 2}})
  os.symlink("..", tmp_path / "train" / "up")  # the whole tree again
  os.symlink(".", tmp_path / "train" / "self")
  os.symlink("missing", tmp_path / "train" / "dangling")
  os.symlink("b", tmp_path / "train" / "a_loop")
  os.symlink("a_loop", tmp_path / "train" / "b")
  train = data.load_source(f"folder:{tmp_path}", "train")
  assert train.num_classes == 2 and train.num_examples == 4
  assert data.folder_class_names(str(tmp_path)) == ["cat", "dog"]
