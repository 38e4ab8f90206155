"""`--head_grid`: the task heads pool a stage's last map to a G x G grid of cells (1: global
average pooling). The pooling is the adaptive cell average for any map size, the heads of
every task take it, and a stage with a grid head trains."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import stages
from psl_tf import tasks
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import base
from psl_tf.tasks import contrastive
from psl_tf.tasks import jigsaw


def _cell_means(maps, grid):
  """Reference: adaptive average pooling written out cell by cell in numpy."""
  n, h, w, c = maps.shape
  out = np.zeros((n, grid, grid, c), np.float32)
  for i in range(grid):
    for j in range(grid):
      r0, r1 = (i * h) // grid, -((-(i + 1) * h) // grid)
      c0, c1 = (j * w) // grid, -((-(j + 1) * w) // grid)
      out[:, i, j] = maps[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out.reshape(n, -1)


@pytest.mark.parametrize("shape,grid", [((8, 8), 4), ((8, 8), 2), ((7, 7), 2), ((5, 9), 3),
                                        ((2, 2), 4), ((6, 6), 1)])
def test_grid_pool_is_the_mean_of_each_cell(shape, grid):
  maps = np.random.default_rng(0).normal(size=(3, *shape, 5)).astype(np.float32)
  got = base.grid_pool(tf.constant(maps), grid).numpy()
  np.testing.assert_allclose(got, _cell_means(maps, grid), atol=1e-6)
  layer = base.GridPooling(grid)
  assert layer.compute_output_shape((None, *shape, 5)) == (None, grid * grid * 5)
  np.testing.assert_allclose(layer(tf.constant(maps)).numpy(), got, atol=1e-6)


def test_grid_one_is_global_average_pooling_and_a_grid_keeps_where_a_feature_is():
  left = np.zeros((1, 8, 8, 1), np.float32)
  left[0, 1, 1] = 1.0
  right = np.zeros_like(left)
  right[0, 6, 6] = 1.0
  gap = [base.grid_pool(tf.constant(m), 1).numpy() for m in (left, right)]
  np.testing.assert_allclose(gap[0], keras.layers.GlobalAveragePooling2D()(left).numpy())
  np.testing.assert_array_equal(gap[0], gap[1])  # global pooling forgets the position
  grid = [base.grid_pool(tf.constant(m), 4).numpy() for m in (left, right)]
  assert np.argmax(grid[0]) == 0 and np.argmax(grid[1]) == 15  # first and last cell


def test_a_grid_below_one_is_refused():
  with pytest.raises(ValueError, match="head_grid"):
    tasks.build_task("rotation", head_grid=0)


@pytest.mark.parametrize("task_name", ["rotation", "simclr", "mocov2"])
def test_the_heads_take_grid_times_grid_cells(task_name):
  task = tasks.build_task(task_name, image_spec=ImageSpec(32, 36), head_hidden=0, head_grid=2)
  head = task.build_head((8, 8, 6), 1)
  pool = head.get_layer("pool")
  assert isinstance(pool, base.GridPooling) and pool.grid == 2
  maps = np.random.default_rng(1).normal(size=(2, 8, 8, 6)).astype(np.float32)
  assert head(maps).shape == (2, task.output_width(1))
  if task_name == "rotation":  # a linear head over the 2x2x6 cell means
    dense = head.get_layer("logits")
    assert dense.kernel.shape == (24, task.num_classes(1))
    want = _cell_means(maps, 2) @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(head(maps).numpy(), want, atol=1e-5)


def test_projection_head_pools_to_the_grid():
  head = contrastive.build_projection_head((4, 4, 8), 16, 8, "proj", grid=2)
  assert head.get_layer("pool").grid == 2
  assert head.layers[2].kernel.shape == (32, 16)  # the hidden layer sees 2 x 2 x 8 values


def test_jigsaw_pools_every_tile_to_the_grid(tmp_path):
  task = jigsaw.JigsawTask(ImageSpec(48, 56), head_hidden=16, head_grid=2, sizes=(4, 8, 16),
                           cell=16, tile=12, cache_dir=str(tmp_path))

  class FakeContext:
    def features(self, x, training):
      del training
      return x  # [9N, 12, 12, 3]: the tile itself is the "map"

    def head(self, z, training):
      del training
      return z

  tiles = np.random.default_rng(2).normal(size=(2, 9, 12, 12, 3)).astype(np.float32)
  out = task.forward(FakeContext(), tf.constant(tiles), training=False).numpy()
  want = _cell_means(tiles.reshape(18, 12, 12, 3), 2).reshape(2, 9, 12)
  np.testing.assert_allclose(out, want, atol=1e-6)
  assert task.build_head((6, 6, 3), 1).input_shape == (None, 9, 12)


def test_head_grid_flag_reaches_the_task_and_a_grid_head_stage_trains(stage_on_random_images):
  config = config_lib.from_flags({"task": "rotation", "head_grid": "4", "head_hidden": "8",
                                  "image_size": "16", "resize": "18"})
  task = tasks.build_task("rotation", config)
  assert task.head_grid == 4
  assert config_lib.to_flags(config)["head_grid"] == "4"
  model, _, head, x, y = stage_on_random_images(task, stages.make_stages("psl", 3)[0], 4, 20,
                                                8, 3)
  before = [w.numpy().copy() for w in head.weights]
  history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=2,
                      epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][-1])
  assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, head.weights))
