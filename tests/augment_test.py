"""The contrastive augmentation ladder: eager == tf.data, what each level may and may not do."""

import numpy as np
import pytest
import tensorflow as tf

from psl_tf.data import augment

SIZE = 24


def _photo(seed=0, h=40, w=52):
  """A smooth random colour image (uint8) with structure at several scales."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (h // 4, w // 4, 3)).astype(np.float32)
  big = tf.image.resize(small, [h, w], method="bilinear").numpy()
  return np.clip(big + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_two_views_eager_equals_tf_data(level):
  image = tf.constant(_photo(level))
  seeds = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int64)
  options = augment.AugmentOptions(sobel_prob=0.5)
  eager = np.stack([augment.two_views(image, level, SIZE, s, options).numpy() for s in seeds])
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: augment.two_views(image, level, SIZE, s, options), num_parallel_calls=2)
  in_data = np.stack([x.numpy() for x in ds])
  assert eager.shape == (4, 2, SIZE, SIZE, 3)
  np.testing.assert_array_equal(eager, in_data)
  assert eager.min() >= 0.0 and eager.max() <= 1.0
  # The two views of one image and the views of different seeds differ.
  assert not np.array_equal(eager[0, 0], eager[0, 1])
  assert not np.array_equal(eager[0], eager[1])


def test_t1_keeps_constant_colour_and_t2_changes_it():
  colour = np.array([200, 40, 90], np.uint8)
  image = tf.constant(np.tile(colour, (30, 36, 1)))
  expected = colour.astype(np.float32) / 255.0
  t2_changed = 0
  for i in range(12):
    seed = tf.constant([i, 9], tf.int64)
    t1 = augment.two_views(image, 1, SIZE, seed).numpy()
    np.testing.assert_allclose(t1, np.broadcast_to(expected, t1.shape), atol=1e-5)
    t2 = augment.two_views(image, 2, SIZE, seed).numpy()
    t2_changed += int(np.abs(t2 - expected).max() > 0.02)
  # Colour jitter (p 0.8) or grayscale (p 0.2) per view: nearly every pair changes colour.
  assert t2_changed >= 8


def test_t1_with_full_crop_is_the_image_or_its_mirror_without_blur():
  """With the crop forced to the whole (square) image, T1 is exact pixels: no resampling
  blur, no colour change; only the flip may act. T3 with the same crop is not."""
  image_u8 = _photo(3, SIZE, SIZE)
  image = image_u8.astype(np.float32) / 255.0
  full = augment.AugmentOptions(crop_min_scale=1.0, crop_ratio=(1.0, 1.0))
  flips = set()
  for i in range(8):
    out = augment.view(tf.constant(image), 1, SIZE, tf.constant([i, 1], tf.int64), full).numpy()
    if np.array_equal(out, image):
      flips.add(False)
    else:
      np.testing.assert_array_equal(out, image[:, ::-1])
      flips.add(True)
  assert flips == {False, True}
  t3 = [augment.view(tf.constant(image), 3, SIZE, tf.constant([i, 1], tf.int64), full).numpy()
        for i in range(4)]
  assert all(not np.array_equal(x, image) and not np.array_equal(x, image[:, ::-1]) for x in t3)


def test_random_resized_crop_area_and_aspect_ranges():
  """The crop box (read back from a coordinate image) obeys scale 0.08-1 and ratio 3/4-4/3."""
  h, w = 60, 80
  rows = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
  cols = np.repeat(np.arange(w, dtype=np.float32)[None, :], h, axis=0)
  coords = tf.constant(np.stack([rows, cols, np.zeros_like(rows)], -1))
  for i in range(20):
    seed = tf.constant([i, 4], tf.int64)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [h, w, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    ch, cw = int(size[0]), int(size[1])
    area = ch * cw / (h * w)
    assert 0.08 - 0.01 <= area <= 1.0
    if (ch, cw) != (h, w):  # fallback to the whole image is allowed
      assert 3 / 4 - 0.05 <= cw / ch <= 4 / 3 + 0.05
    out = augment.random_resized_crop(coords, 8, seed).numpy()
    assert out[..., 0].min() >= int(begin[0]) - 1e-3
    assert out[..., 0].max() <= int(begin[0]) + ch - 1 + 1e-3


def test_sobel_shape_range_and_edges():
  image = np.zeros((20, 20, 3), np.float32)
  image[:, 10:] = [0.9, 0.5, 0.1]  # one vertical edge
  out = augment.sobel(tf.constant(image)).numpy()
  assert out.shape == (20, 20, 3)
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert out.max() == pytest.approx(1.0)
  np.testing.assert_array_equal(out[..., 0], out[..., 1])  # grey edge map in RGB
  assert np.all(out[:, :8] == 0) and np.all(out[:, 12:] == 0)  # flat regions have no edges
  assert np.all(out[:, 9:11, 0] > 0.5)
  flat = augment.sobel(tf.constant(np.full((8, 8, 3), 0.3, np.float32))).numpy()
  np.testing.assert_array_equal(flat, np.zeros((8, 8, 3)))


def test_sobel_inside_t3_keeps_declared_shape_and_range():
  options = augment.AugmentOptions(sobel_prob=1.0, blur_prob=0.0)
  image = tf.constant(_photo(5))
  out = augment.view(tf.cast(image, tf.float32) / 255.0, 3, SIZE,
                     tf.constant([2, 2], tf.int64), options).numpy()
  assert out.shape == (SIZE, SIZE, 3)
  assert out.min() >= 0.0 and out.max() == pytest.approx(1.0)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_gaussian_blur_keeps_flat_images_and_smooths_an_impulse():
  flat = tf.constant(np.full((16, 16, 3), 0.4, np.float32))
  np.testing.assert_allclose(augment.gaussian_blur(flat, 1.5, 5).numpy(), 0.4, atol=1e-6)
  impulse = np.zeros((16, 16, 3), np.float32)
  impulse[8, 8] = 1.0
  out = augment.gaussian_blur(tf.constant(impulse), 1.0, 5).numpy()
  assert out[8, 8, 0] < 0.5 and out[8, 9, 0] > 0
  np.testing.assert_allclose(out.sum(axis=(0, 1)), 1.0, rtol=1e-5)
  assert augment.blur_taps(224) == 23 and augment.blur_taps(32) == 3


def test_bad_options_and_levels_raise():
  with pytest.raises(ValueError, match="probability"):
    augment.AugmentOptions(color_prob=1.5)
  with pytest.raises(ValueError, match="crop scales"):
    augment.AugmentOptions(crop_min_scale=0.0)
  with pytest.raises(ValueError, match="levels 1..3"):
    augment.level_ops(4)
  assert augment.level_ops(1) == ["random_resized_crop", "flip"]
  assert set(augment.level_ops(2)) < set(augment.level_ops(3))
