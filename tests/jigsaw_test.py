"""The jigsaw ladder: tiles come back in grid order when the permutation is undone, labels and
sets per level, eager == tf.data, the 9N-tile Siamese forward, the stop-gradient property of a
jigsaw stage, and a full psl run that leaves permutations.npy in the work directory."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import stages
from psl_tf import tasks
from psl_tf.cli import train
from psl_tf.models import blocks
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import jigsaw
from psl_tf.tasks import permutations as perms

SIZES = (4, 8, 16)
CELL, TILE = 16, 12
SIDE = 3 * CELL  # 48


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("perm_cache"))


def _task(cache_dir, **kwargs):
  options = dict(sizes=SIZES, resize=SIDE, crop=SIDE, cell=CELL, tile=TILE, normalize=False,
                 cache_dir=cache_dir)
  options.update(kwargs)
  return jigsaw.JigsawTask(ImageSpec(32, 36), head_hidden=16, **options)


def _coordinate_image(side=SIDE):
  """uint8 image whose red channel is 5 * x and green channel 5 * y."""
  y, x = np.mgrid[0:side, 0:side]
  return np.stack([5 * x, 5 * y, np.full_like(x, 77)], -1).astype(np.uint8)


def _coordinates(tiles):
  """(x, y) integer coordinates encoded by _coordinate_image, from float tiles in [0, 1]."""
  codes = np.rint(np.asarray(tiles) * 255.0 / 5.0).astype(int)
  return codes[..., 0], codes[..., 1]


def _unshuffle(shuffled, perm):
  grid = np.empty_like(shuffled)
  grid[perm] = shuffled  # position i holds the tile of cell perm[i]
  return grid


def _seed(i):
  return tf.constant([11, i], tf.int64)


def test_resize_to_the_same_size_is_exact():
  # The undo tests below rely on the pipeline not blurring an image already at its size.
  image = tf.constant(_coordinate_image())
  out = jigsaw.image_lib.resize_shorter_side(jigsaw.image_lib.to_float(image), SIDE)
  np.testing.assert_array_equal(np.rint(out.numpy() * 255).astype(np.uint8), image.numpy())


def test_undoing_the_permutation_gives_the_grid_tiles_evaluation_view(cache_dir):
  task = _task(cache_dir)
  table = task.permutations(3)
  fn = task.example_fn(3, training=False)
  image = _coordinate_image()
  margin = (CELL - TILE) // 2
  seen = set()
  for i in range(12):
    tiles, label = fn(tf.constant(image), tf.constant(0, tf.int64), _seed(i))
    seen.add(int(label))
    grid = _unshuffle(tiles.numpy(), table[int(label)])
    for cell in range(9):
      r, c = divmod(cell, 3)
      expected = image[r * CELL + margin:r * CELL + margin + TILE,
                       c * CELL + margin:c * CELL + margin + TILE] / 255.0
      np.testing.assert_allclose(grid[cell], expected, atol=1e-6)
  assert len(seen) > 1  # the permutation does vary with the seed


def test_undoing_the_permutation_gives_the_grid_tiles_training_view(cache_dir):
  # Random tile offsets and flips: each unshuffled tile must be a contiguous block inside its
  # own cell (mirrored when the crop was flipped, the same flip for all nine tiles).
  task = _task(cache_dir)
  table = task.permutations(3)
  fn = task.example_fn(3, training=True)
  flips, offsets = set(), set()
  for i in range(16):
    tiles, label = fn(tf.constant(_coordinate_image()), tf.constant(0, tf.int64), _seed(i))
    xs, ys = _coordinates(_unshuffle(tiles.numpy(), table[int(label)]))
    flipped = bool(xs[0, 0, 1] < xs[0, 0, 0])
    flips.add(flipped)
    for cell in range(9):
      r, c = divmod(cell, 3)
      x, y = xs[cell], ys[cell]
      np.testing.assert_array_equal(np.diff(y, axis=0), 1)
      np.testing.assert_array_equal(np.diff(x, axis=1), -1 if flipped else 1)
      assert np.all(y // CELL == r)
      assert np.all(x // CELL == (2 - c if flipped else c))
      offsets.add((int(y.min() % CELL), int(x.min() % CELL)))
  assert flips == {True, False}
  assert len(offsets) > 5  # tiles sit at varying places inside their cells


@pytest.mark.parametrize("level", [1, 2, 3])
def test_labels_in_range_per_level(cache_dir, level):
  task = _task(cache_dir)
  fn = task.example_fn(level, training=True)
  image = _coordinate_image()
  ds = tf.data.Dataset.range(120).map(
      lambda i: fn(tf.constant(image), tf.constant(0, tf.int64), tf.stack([tf.constant(5, tf.int64), i])))
  labels = np.array([int(y) for _, y in ds])
  assert labels.min() >= 0 and labels.max() < SIZES[level - 1]
  assert len(set(labels)) == SIZES[level - 1]  # 120 draws reach every index of a small set
  assert task.num_classes(level) == SIZES[level - 1]
  np.testing.assert_array_equal(task.permutations(level), task.permutations(3)[:SIZES[level - 1]])


def test_eager_and_tf_data_agree(cache_dir):
  task = _task(cache_dir, normalize=True, color_jitter=0.8, grayscale=0.3, resize=60)
  fn = task.example_fn(2, training=True)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 70, 64, 3), dtype=np.uint8)
  seeds = np.array([[3, i] for i in range(4)], np.int64)
  eager = [fn(tf.constant(im), tf.constant(0, tf.int64), tf.constant(s))
           for im, s in zip(images, seeds)]
  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda im, s: fn(im, tf.constant(0, tf.int64), s))
  for (x_eager, y_eager), (x_data, y_data) in zip(eager, ds):
    assert x_eager.shape == (9, TILE, TILE, 3)
    np.testing.assert_allclose(x_eager.numpy(), x_data.numpy(), atol=1e-5)
    assert int(y_eager) == int(y_data)


def test_tiles_are_normalised_one_by_one(cache_dir):
  task = _task(cache_dir, normalize=True)
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
  image[:CELL] //= 4  # a dark top row of cells must not stay darker after normalisation
  tiles, _ = task.example_fn(1, training=True)(tf.constant(image), tf.constant(0, tf.int64),
                                                _seed(0))
  # What the first convolution sees, after b1's fixed ImageNet standardisation.
  z = (tiles.numpy() - np.array(blocks.IMAGENET_MEAN)) / np.array(blocks.IMAGENET_STD)
  np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(z.std(axis=(1, 2)), 1.0, atol=1e-3)


def test_grayscale_and_jitter_act_per_tile(cache_dir):
  rng = np.random.default_rng(2)
  image = tf.constant(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
  gray, _ = _task(cache_dir, grayscale=1.0).example_fn(1, True)(image, tf.constant(0, tf.int64),
                                                                 _seed(0))
  np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-6)
  np.testing.assert_allclose(gray[..., 1], gray[..., 2], atol=1e-6)
  plain, _ = _task(cache_dir).example_fn(1, True)(image, tf.constant(0, tf.int64), _seed(0))
  jittered, _ = _task(cache_dir, color_jitter=1.0).example_fn(1, True)(
      image, tf.constant(0, tf.int64), _seed(0))
  # Each tile gets its own brightness shift: the shift differs between tiles.
  shift = (jittered.numpy() - plain.numpy()).mean(axis=(1, 2, 3))
  assert np.ptp(shift) > 1e-3


def test_forward_runs_the_nine_tiles_as_one_batch_in_puzzle_order(cache_dir):
  task = _task(cache_dir)

  class FakeContext:
    calls = []

    def features(self, x, training):
      self.calls.append(tuple(x.shape))
      return x * 2.0  # a "trunk" that keeps each tile's identity

    def head(self, z, training):
      del training
      return z

  rng = np.random.default_rng(3)
  inputs = tf.constant(rng.normal(size=(5, 9, TILE, TILE, 3)), tf.float32)
  ctx = FakeContext()
  out = task.forward(ctx, inputs, training=True)
  assert ctx.calls == [(45, TILE, TILE, 3)]
  np.testing.assert_allclose(out.numpy(), 2.0 * inputs.numpy().mean(axis=(2, 3)), atol=1e-5)


def test_head_concatenates_tiles_in_puzzle_order(cache_dir):
  task = _task(cache_dir)
  head = task.build_head((None, None, 24), 2)
  assert head.input_shape == (None, 9, 24)
  assert head.output_shape == (None, SIZES[1])
  x = np.random.default_rng(4).normal(size=(2, 9, 24)).astype(np.float32)
  swapped = x[:, [1, 0, 2, 3, 4, 5, 6, 7, 8]]
  # Order matters: the same nine vectors in another order give other logits.
  assert not np.allclose(head(x, training=False), head(swapped, training=False))


def _snapshot(backbone):
  return [[v.numpy().copy() for v in block.weights] for block in blocks.get_blocks(backbone)]


def test_stage2_stop_gradient_keeps_b1_bit_identical(cache_dir, stage_on_random_images):
  model, backbone, _, x, y = stage_on_random_images(
      _task(cache_dir, normalize=True), stages.make_stages("psl", 3)[1], 8, 56, 4, 5)
  before = _snapshot(backbone)
  model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=2, epochs=1,
            verbose=0)
  after = _snapshot(backbone)
  changed = [not all(np.array_equal(a, b) for a, b in zip(bb, ab))
             for bb, ab in zip(before, after)]
  # b1 (weights and BN statistics) bit-identical, b2..b4 trained, b5 never computed.
  assert changed == [False, True, True, True, False]


def test_bad_options_raise_value_errors(cache_dir):
  with pytest.raises(ValueError, match="3 x --jigsaw_cell"):
    _task(cache_dir, crop=50)
  with pytest.raises(ValueError, match="--jigsaw_tile"):
    _task(cache_dir, tile=20)
  with pytest.raises(ValueError, match="needs 3 set sizes"):
    _task(cache_dir, sizes="10,20")
  with pytest.raises(ValueError, match="increase"):
    _task(cache_dir, sizes="10,30,20")
  with pytest.raises(ValueError, match="whole numbers"):
    _task(cache_dir, sizes="a,b,c")
  with pytest.raises(ValueError, match="--jigsaw_resize"):
    _task(cache_dir, resize=40)


def test_sizes_scale_from_the_image_size():
  assert jigsaw.scaled_sizes(224) == (256, 225, 75, 64)
  assert jigsaw.scaled_sizes(96) == (109, 96, 32, 27)
  assert jigsaw.scaled_sizes(64, tile=20) == (72, 63, 21, 20)


def test_registered_and_built_from_a_config(cache_dir):
  config = config_lib.Config(task="jigsaw", image_size=96,
                             task_options={"sizes": ["4", "8", "16"], "cache_dir": cache_dir})
  task = tasks.build_task("jigsaw", config)
  assert isinstance(task, jigsaw.JigsawTask)
  assert (task.resize, task.crop, task.cell, task.tile) == (109, 96, 32, 27)


def test_psl_cli_run_leaves_the_work_directory_and_permutations(tmp_path, cache_dir, capsys,
                                                                train_flags):
  # The CLI's main in-process: flags -> Config (the --jigsaw_* flags reach the task) -> run.
  workdir = str(tmp_path / "run")
  train_flags(["psl_tf.train", "--task=jigsaw", "--mode=psl", "--dataset=demo",
               "--backbone=cifar_resnet", "--depth=10", "--width=8", "--image_size=32",
               "--head_hidden=16", "--batch_size=4", "--epochs=1", "--steps_per_epoch=2",
               "--heldout_examples=4", "--shuffle_buffer=64", "--verbose=0",
               "--strategy=one_device",
               "--jigsaw_sizes=4,8,16", "--jigsaw_resize=40", "--jigsaw_crop=33",
               "--jigsaw_cell=11", "--jigsaw_tile=9", f"--jigsaw_cache_dir={cache_dir}",
               f"--workdir={workdir}"])
  train.main(["psl_tf.train"], train_flags)
  out = capsys.readouterr().out
  assert "jigsaw level 2: C2: 8 permutations" in out
  assert os.path.exists(os.path.join(workdir, "flags.txt"))
  assert "--jigsaw_tile=9" in open(os.path.join(workdir, "flags.txt")).read()
  for k in (1, 2, 3):
    assert os.path.exists(os.path.join(workdir, f"stage_{k}", "backbone.weights.h5"))
  assert os.path.exists(os.path.join(workdir, "export", "saved_model.pb"))
  saved = np.load(os.path.join(workdir, "permutations.npy"))
  assert saved.shape == (16, 9) and np.issubdtype(saved.dtype, np.integer)
  np.testing.assert_array_equal(saved, perms.load_or_build(16, cache_dir=cache_dir))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert [s["level"] for s in summary["stages"]] == [1, 2, 3]
  for stage, size in zip(summary["stages"], (4, 8, 16)):
    average, minimum = perms.hamming_stats(saved[:size])
    assert stage["permutations"] == size
    assert stage["hamming_average"] == pytest.approx(average, abs=1e-4)
    assert stage["hamming_min"] == minimum
    assert np.isfinite(stage["final_loss"])
    assert stage["heldout_images"] == 4  # one batch of the held-out split, evaluation view


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape, options", [
    ((70, 64), dict(resize=60)),                             # shrink, then crop 48
    ((32, 32), dict(resize=38, crop=33, cell=11, tile=9)),   # the CIFAR reproduction's tiles
])
def test_batch_fn_equals_example_fn_stacked(cache_dir, normalize, shape, options):
  task = _task(cache_dir, normalize=normalize, **options)
  fn, batch_fn = task.example_fn(3, True), task.batch_fn(3, True)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, *shape, 3), dtype=np.uint8)
  seeds = np.array([[5, i] for i in range(10)], np.int64)
  labels = np.zeros(10, np.int64)
  per = [fn(tf.constant(im), tf.constant(0, tf.int64), tf.constant(s))
         for im, s in zip(images, seeds)]
  x, y = tf.function(batch_fn)(tf.constant(images), tf.constant(labels), tf.constant(seeds))
  np.testing.assert_array_equal(y.numpy(), [int(p[1]) for p in per])
  np.testing.assert_allclose(x.numpy(), np.stack([p[0].numpy() for p in per]), atol=1e-5)


def test_no_batch_fn_with_per_tile_jitter_or_for_evaluation(cache_dir):
  assert _task(cache_dir, color_jitter=0.5).batch_fn(1, True) is None
  assert _task(cache_dir, grayscale=0.2).batch_fn(1, True) is None
  assert _task(cache_dir).batch_fn(1, False) is None
