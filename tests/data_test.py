"""Data sources (demo, image folders with bad files, TFDS via mock_data) and the input_fn."""

import os
import socket

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from psl_tf import data
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import rotation


def test_demo_is_real_photographs_with_labels():
  source = data.load_source("demo", "train")
  images, labels = next(iter(source.images().batch(1000)))
  assert images.dtype == tf.uint8 and images.shape[1:] == (96, 96, 3)
  assert source.num_classes == len(data.DEMO_PHOTOS) == len(set(labels.numpy()))
  assert float(tf.math.reduce_std(tf.cast(images, tf.float32))) > 20  # not flat noise-free
  test_images, _ = next(iter(data.load_source("demo", "test").images().batch(10)))
  assert not np.array_equal(images[:10], test_images)  # different crops for test


def _write_tree(root):
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 3), ("test", 2)):
    for cls in ("cat", "dog"):
      os.makedirs(os.path.join(root, split, cls))
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(
            os.path.join(root, split, cls, f"{i}.png"))
  # Three bad files in train: empty, not an image, truncated PNG.
  open(os.path.join(root, "train", "cat", "empty.jpg"), "wb").close()
  with open(os.path.join(root, "train", "dog", "text.png"), "w") as f:
    f.write("not an image")
  with open(os.path.join(root, "train", "dog", "0.png"), "rb") as f:
    head = f.read(200)
  with open(os.path.join(root, "train", "dog", "truncated.png"), "wb") as f:
    f.write(head)


def test_folder_skips_and_counts_bad_files(tmp_path):
  _write_tree(str(tmp_path))
  source = data.load_source(f"folder:{tmp_path}", "train")
  assert source.skipped == 3 and source.num_examples == 6 and source.num_classes == 2
  images = list(source.images())
  assert len(images) == 6
  assert sorted(int(l) for _, l in images) == [0, 0, 0, 1, 1, 1]
  assert data.load_source(f"folder:{tmp_path}", "test").num_examples == 4


def test_folder_errors_are_clear(tmp_path):
  with pytest.raises(data.DataError, match="not a readable directory"):
    data.load_source(f"folder:{tmp_path}/missing")
  os.makedirs(tmp_path / "empty" / "cls")
  with pytest.raises(data.DataError, match="no images"):
    data.load_source(f"folder:{tmp_path}/empty")


def test_tfds_source_with_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    source = data.load_source("cifar10", "train")
    image, label = next(iter(source.images()))
  assert source.num_classes == 10 and image.shape == (32, 32, 3) and label.dtype == tf.int64


def test_unknown_tfds_name():
  with pytest.raises(data.DataError, match="unknown data set 'no_such_set'"):
    data.load_source("no_such_set")


def test_tfds_download_without_network_says_how_to_prepare_elsewhere(monkeypatch, tmp_path):
  import requests  # pylint: disable=g-import-not-at-top  (TFDS's own download dependency)

  def load_without_network(*args, **kwargs):
    del args, kwargs
    try:  # TFDS wraps the requests error it gets after its retries
      raise requests.exceptions.ConnectionError("HTTPSConnectionPool: Max retries exceeded")
    except requests.exceptions.ConnectionError as e:
      raise RuntimeError("Failed to download cifar-10-binary.tar.gz") from e

  monkeypatch.setattr(tfds, "load", load_without_network)
  with pytest.raises(data.DataError) as error:
    data.load_source("cifar10", "train", data_dir=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message and f"not prepared in {tmp_path}" in message
  assert "tfds build cifar10 --data_dir=DIR" in message and "folder:PATH" in message

  def load_with_bad_split(*args, **kwargs):
    del args, kwargs
    raise ValueError("Unknown split 'tran'. Should be one of ['test', 'train'].\nmore")

  monkeypatch.setattr(tfds, "load", load_with_bad_split)
  with pytest.raises(data.DataError,
                     match=r"^cannot load TFDS 'cifar10' split 'tran': Unknown split 'tran'.*\]\.$"):
    data.load_source("cifar10", "tran")


def test_tfds_not_prepared_and_server_unreachable_fails_at_once(monkeypatch, tmp_path):
  calls, asked = [], []

  def load(*args, download=True, **kwargs):
    del args, kwargs
    calls.append(download)
    if download:
      raise AssertionError("the test failed: a download was started")
    raise AssertionError(f"Dataset cifar10: could not find data in {tmp_path}. Please ...")

  monkeypatch.setattr(tfds, "load", load)
  monkeypatch.setattr(data, "_reachable", lambda urls: asked.extend(urls) or False)
  with pytest.raises(data.DataError) as error:
    data.load_source("cifar10", "train", data_dir=str(tmp_path))
  message = str(error.value)
  assert calls == [False] and any("cs.toronto.edu" in url for url in asked)
  assert "\n" not in message and "does not answer (no network?)" in message
  assert f"not prepared in {tmp_path}" in message and "tfds build cifar10" in message


def test_reachable_opens_a_connection_or_trusts_a_proxy(monkeypatch):
  for key in ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "HTTP_PROXY",
              "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY"):
    monkeypatch.delenv(key, raising=False)
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    open_url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar.tar.gz"
    assert data._reachable([open_url], timeout=5)
  closed_url = open_url  # the server socket is closed now: the connection is refused
  assert not data._reachable([closed_url], timeout=5)
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  assert data._reachable([closed_url], timeout=5)


def test_input_fn_batches_per_replica_and_is_reproducible():
  source = data.load_source("demo", "train")
  task = rotation.RotationTask(ImageSpec(16, 18))
  make = lambda: data.make_input_fn(source, task.example_fn(2, True), 8, seed=3,
                                    shuffle_buffer=64)
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  x, y = next(iter(make()(context)))
  assert x.shape == (4, 16, 16, 3) and y.shape == (4,)
  a = [b[1].numpy() for b in make()().take(3)]
  b = [b[1].numpy() for b in make()().take(3)]
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))


def test_folder_source_interleaves_classes_before_the_windowed_shuffle(tmp_path):
  # The listing is class-sorted; a shuffle buffer smaller than the data must still mix classes.
  for cls in ("a", "b", "c"):
    os.makedirs(tmp_path / "train" / cls)
    for i in range(20):
      Image.fromarray(np.full((4, 4, 3), 80 * "abc".index(cls), np.uint8)).save(
          tmp_path / "train" / cls / f"{i}.png")
  source = data.load_source(f"folder:{tmp_path}", "train", image_check="none")
  pairs = list(source.elements.as_numpy_iterator())
  assert sorted(p[1] for p in pairs) == [0] * 20 + [1] * 20 + [2] * 20
  assert {p[1] for p in pairs[:10]} == {0, 1, 2}
  for path, label in pairs:  # every file keeps its own folder's label
    assert os.path.basename(os.path.dirname(path.decode())) == "abc"[label]
  batch = data.make_input_fn(source, lambda image, label, seed: (image, label), 12, seed=0,
                             shuffle_buffer=4)(None)
  _, labels = next(iter(batch))
  assert len(set(labels.numpy())) > 1


def test_heldout_source_is_the_test_split_when_there_is_one(tmp_path):
  assert data.load_heldout_source("demo").num_examples == 200
  assert data.load_heldout_source("demo", "none") is None
  for split in ("train", "test"):
    (tmp_path / "with" / split / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "with" / split / "cat" / "a.png")
  (tmp_path / "without" / "cat").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(tmp_path / "without" / "cat" / "a.png")
  heldout = data.load_heldout_source(f"folder:{tmp_path / 'with'}")
  assert heldout.num_examples == 1 and heldout.name == f"folder:{tmp_path / 'with'}"
  assert data.load_heldout_source(f"folder:{tmp_path / 'without'}") is None
  with pytest.raises(data.DataError, match="no 'holdout' sub-folder"):
    data.load_heldout_source(f"folder:{tmp_path / 'without'}", "holdout")


def _uniform_tree(root, per_class=6, side=12):
  rng = np.random.default_rng(1)
  for cls in ("a", "b"):
    os.makedirs(os.path.join(root, "train", cls))
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
          os.path.join(root, "train", cls, f"{i}.png"))


def test_cache_in_memory_decodes_once_and_keeps_images_order_and_batches(tmp_path):
  _uniform_tree(str(tmp_path))
  source = data.load_source(f"folder:{tmp_path}", "train")
  cached = data.cache_in_memory(source, "always")
  assert cached.in_memory and not source.in_memory and cached.num_examples == 12
  for (a, la), (b, lb) in zip(source.images().as_numpy_iterator(),
                              cached.images().as_numpy_iterator()):
    assert a.dtype == b.dtype == np.uint8 and la == lb
    np.testing.assert_array_equal(a, b)
  # The training pipeline gives the same batches (same shuffle, same augmentation seeds).
  task = rotation.RotationTask(ImageSpec(8, 10))
  batches = [list(data.make_input_fn(s, task.example_fn(3, True), 4, seed=5,
                                     shuffle_buffer=8)().take(4).as_numpy_iterator())
             for s in (source, cached)]
  for (xa, ya), (xb, yb) in zip(*batches):
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(xa, xb)


def test_cache_counts_files_that_fail_to_decode_when_unchecked(tmp_path):
  _uniform_tree(str(tmp_path))
  with open(tmp_path / "train" / "a" / "0.png", "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n not an image")
  source = data.load_source(f"folder:{tmp_path}", "train", image_check="none")
  assert source.num_examples == 12 and source.skipped == 0  # nothing checked up front
  cached = data.cache_in_memory(source, "always")
  assert cached.num_examples == 11 and cached.skipped == 1
  checked = data.load_source(f"folder:{tmp_path}", "train", image_check="full")
  assert checked.skipped == 1 and data.cache_in_memory(checked, "always").skipped == 1


def test_cache_auto_only_for_small_data_sets_and_not_for_mixed_sizes(tmp_path):
  _uniform_tree(str(tmp_path))
  source = data.load_source(f"folder:{tmp_path}", "train")
  assert data.estimated_decoded_bytes(source) == 12 * 12 * 12 * 3
  assert data.cache_in_memory(source, "auto").in_memory
  assert data.cache_in_memory(source, "auto", max_bytes=1000) is source
  assert data.cache_in_memory(source, "never") is source
  demo = data.load_source("demo", "train")
  assert data.cache_in_memory(demo, "always") is demo  # already in memory
  mixed = tmp_path / "mixed"
  _write_tree(str(mixed))  # images of 20-22 x 24 px
  mixed_source = data.load_source(f"folder:{mixed}", "train")
  assert data.cache_in_memory(mixed_source, "always") is mixed_source
  with pytest.raises(data.DataError, match="cache must be one of"):
    data.cache_in_memory(source, "sometimes")
