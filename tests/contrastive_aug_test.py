"""The batched contrastive views: equal to the per-example views, every op against TF's own,
and the draws' ranges and frequencies."""

import numpy as np
import pytest
import tensorflow as tf

from psl_tf.data import augment
from psl_tf import data
from psl_tf.tasks import ImageSpec
from psl_tf.tasks import build_task
from psl_tf.tasks import contrastive_aug as ca

OPTIONS = {
    "simclr": augment.AugmentOptions(sobel_prob=0.5),
    "moco": augment.AugmentOptions(crop_min_scale=0.2, color_strength=0.5),
    "no_flip_no_colour": augment.AugmentOptions(flip=False, color_strength=0.0, blur_prob=1.0),
    "always": augment.AugmentOptions(color_prob=1.0, gray_prob=1.0, blur_prob=1.0,
                                     sobel_prob=1.0),
}


def _images(n, h, w, seed=0):
  """Smooth random colour images (uint8) with flat, saturated and grey patches."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (n, h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
  big = tf.image.resize(small, [h, w]).numpy() + rng.normal(0, 12, (n, h, w, 3))
  big[:, :3, :3] = 0.0  # black
  big[:, -3:, -3:] = 255.0  # white
  big[:, :3, -3:] = 128.0  # grey
  return np.clip(big, 0, 255).astype(np.uint8)


def _seeds(n, base=7):
  return np.stack([np.full(n, base), np.arange(n)], axis=1).astype(np.int64)


@pytest.mark.parametrize("level, options, shape, size", [
    (1, "simclr", (32, 32), 32), (2, "simclr", (32, 32), 32), (3, "simclr", (32, 32), 32),
    (3, "moco", (40, 52), 24),  # shrinking crops, wide images
    (3, "no_flip_no_colour", (20, 18), 28),  # enlarging, taller than wide
    (2, "always", (32, 32), 32), (3, "always", (24, 30), 16)])
def test_batched_views_equal_the_per_example_views(level, options, shape, size):
  n = 10
  images, seeds = _images(n, *shape, seed=level), _seeds(n)
  o = OPTIONS[options]
  per_example = np.stack([
      augment.two_views(tf.constant(images[i]), level, size, tf.constant(seeds[i]), o).numpy()
      for i in range(n)])
  batched = tf.function(lambda x, s: ca.two_views_batch(x, s, level, size, o))(
      tf.constant(images), tf.constant(seeds)).numpy()
  assert batched.shape == (n, 2, size, size, 3) and batched.dtype == np.float32
  np.testing.assert_allclose(batched, per_example, atol=2e-5)


def test_views_range_determinism_and_pairs_differ():
  images, seeds = tf.constant(_images(16, 32, 32)), tf.constant(_seeds(16))
  fn = tf.function(lambda x, s: ca.two_views_batch(x, s, 3, 32, OPTIONS["simclr"]))
  a, b = fn(images, seeds).numpy(), fn(images, seeds).numpy()
  np.testing.assert_array_equal(a, b)  # same seeds, same views
  assert a.min() >= 0.0 and a.max() <= 1.0
  for i in range(16):
    assert not np.array_equal(a[i, 0], a[i, 1])  # the two views of an image differ
  other = fn(images, tf.constant(_seeds(16, base=8))).numpy()
  assert not np.array_equal(a, other)
  # A float batch in [0, 1] gives the views of the uint8 batch.
  floats = fn(tf.cast(images, tf.float32) / 255.0, seeds).numpy()
  np.testing.assert_allclose(floats, a, atol=1e-5)


def _draws(n, level, options, h=32, w=40):
  """The draws of n images' two views, traced once as the pipeline runs them (eagerly, the
  per-image `tf.map_fn` of 1000 images took 17 s of CPU; the stateless draws are the same)."""
  seeds = tf.constant(_seeds(n, base=3))

  @tf.function
  def draw(seeds):
    return ca.draw_two_views(tf.constant([h, w, 3]), level, seeds, options)
  return draw(seeds)


def test_draw_ranges_and_frequencies():
  """Each draw in its documented range, each coin near its probability (2000 views: a
  binomial with p = 0.5 has sd 0.011, so 0.05 is > 4 sd)."""
  o = augment.AugmentOptions(color_strength=0.5)
  d = _draws(1000, 3, o)
  h, w = 32, 40
  crop = d.crop.numpy()
  begin = d.begin.numpy()
  area = crop[:, 0] * crop[:, 1] / (h * w)
  assert (begin >= 0).all() and (begin + crop <= [h, w]).all()
  assert area.min() >= o.crop_min_scale - 0.02 and area.max() <= 1.0
  ratio = crop[:, 1] / crop[:, 0]
  partial = area < 1.0
  assert (ratio[partial] >= 3 / 4 - 0.1).all() and (ratio[partial] <= 4 / 3 + 0.1).all()
  factors = d.factors.numpy()
  assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4
  assert np.abs(factors[:, 3]).max() <= 0.1
  assert factors[:, :3].std() > 0.2  # spread over the range, not a constant
  np.testing.assert_array_equal(np.sort(d.order.numpy(), axis=1), np.tile(np.arange(4), (2000, 1)))
  assert len({tuple(r) for r in d.order.numpy()}) == 24  # every order occurs
  sigma = d.sigma.numpy()
  assert sigma.min() >= 0.1 and sigma.max() <= 2.0
  for coin, p in [(d.flip, 0.5), (d.color, o.color_prob), (d.gray, o.gray_prob),
                  (d.blur, o.blur_prob), (d.sobel, o.sobel_prob)]:
    assert abs(coin.numpy().mean() - p) < 0.05


def test_levels_only_draw_their_ops():
  o = augment.AugmentOptions(color_prob=1.0, gray_prob=1.0, blur_prob=1.0, sobel_prob=1.0)
  d1, d2, d3 = (_draws(50, level, o) for level in (1, 2, 3))
  assert not d1.color.numpy().any() and not d1.gray.numpy().any()
  assert d2.color.numpy().all() and d2.gray.numpy().all() and not d2.blur.numpy().any()
  assert d3.blur.numpy().all() and d3.sobel.numpy().all()
  # The crop and flip of a view do not depend on the level.
  np.testing.assert_array_equal(d1.crop.numpy(), d3.crop.numpy())
  np.testing.assert_array_equal(d1.flip.numpy(), d3.flip.numpy())


def _planar(x):
  return tf.transpose(x, [0, 3, 1, 2])


def _nhwc(x):
  return tf.transpose(x, [0, 2, 3, 1]).numpy()


@pytest.mark.parametrize("factor", [0.0, 0.3, 1.0, 1.8, 5.0])
def test_colour_ops_equal_tf_image(factor):
  images = tf.constant(_images(4, 12, 14, seed=2), tf.float32) / 255.0
  f = tf.fill([4], factor)
  for op, reference in [(ca._brightness, lambda x, f: x * f),
                        (ca._contrast, tf.image.adjust_contrast),
                        (ca._saturation, tf.image.adjust_saturation)]:
    expected = np.stack([reference(images[i], factor).numpy() for i in range(4)])
    np.testing.assert_allclose(_nhwc(op(_planar(images), f)), expected, atol=2e-6)
  for delta in (-0.5, -0.2, 0.0, 0.13, 0.5):
    expected = np.stack([tf.image.adjust_hue(images[i], delta).numpy() for i in range(4)])
    np.testing.assert_allclose(_nhwc(ca._hue(_planar(images), tf.fill([4], delta))), expected,
                               atol=2e-6)


def test_grey_blur_and_sobel_equal_the_per_example_ops():
  images = tf.constant(_images(3, 16, 16, seed=4), tf.float32) / 255.0
  grey = np.stack([augment.to_grayscale(images[i]).numpy() for i in range(3)])
  np.testing.assert_allclose(_nhwc(ca._grayscale(_planar(images))), grey, atol=1e-6)
  sigma = tf.constant([0.1, 0.9, 2.0])
  blurred = np.stack([augment.gaussian_blur(images[i], sigma[i], 5).numpy() for i in range(3)])
  np.testing.assert_allclose(_nhwc(ca._blur(_planar(images), sigma, 5)), blurred, atol=2e-6)
  edges = np.stack([augment.sobel(images[i]).numpy() for i in range(3)])
  np.testing.assert_allclose(_nhwc(ca._sobel(_planar(images))), edges, atol=2e-6)
  flat = tf.fill([1, 3, 8, 8], 0.3)
  np.testing.assert_array_equal(ca._sobel(flat).numpy(), 0.0)


@pytest.mark.parametrize("name", ["simclr", "mocov2"])
@pytest.mark.parametrize("steps_per_epoch", [None, 2])
def test_task_pipeline_batched_gives_the_per_example_batches(name, steps_per_epoch):
  tf.random.set_seed(0)
  source = data.load_source("demo", "train")  # in memory
  task = build_task(name, image_spec=ImageSpec(24, 27))
  for level in (1, 2, 3):
    assert task.batch_fn(level, True) is not None
  make = lambda batch_fn: data.make_input_fn(
      source, task.example_fn(3, True), 8, seed=3, shuffle_buffer=64, batch_fn=batch_fn,
      steps_per_epoch=steps_per_epoch, num_epochs=None if steps_per_epoch is None else 2)()
  batched = list(make(task.batch_fn(3, True)).take(3).as_numpy_iterator())
  per_example = list(make(None).take(3).as_numpy_iterator())
  for (xb, yb), (xp, yp) in zip(batched, per_example):
    assert xb.shape == (8, 2, 24, 24, 3) and yb.dtype == yp.dtype
    np.testing.assert_array_equal(yb, yp)
    np.testing.assert_allclose(xb, xp, atol=2e-5)
  with pytest.raises(ValueError, match="levels"):
    task.batch_fn(4, True)
