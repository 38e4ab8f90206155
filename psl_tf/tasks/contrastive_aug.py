"""The contrastive views of `psl_tf.augment` for a whole batch at once (`Task.batch_fn`).

`two_views_batch(images, seeds, level, size, options)` equals stacking
`augment.two_views(images[i], level, size, seeds[i], options)` over the rows, to float
rounding (`tests/contrastive_aug_test.py`), so a run whose data set is held in memory
(`--cache`) gets the very views the per-example pipeline makes. Only the random draws stay
per image (one `tf.map_fn` over the seeds, with `augment.view`'s own stateless draws and seed
layout); every image op runs once on all 2N views of the batch:

* **random resized crop + flip**: a bilinear resize with per-view crop boxes, computed as
  TF's half-pixel `ResizeBilinear` computes it (lower/upper source index and weight per output
  row and column, clamped to the crop) with two batched gathers; the flip reverses the column
  table, so it costs nothing;
* **colour jitter**: for each of the four positions of the random order, the views are
  partitioned by the op they apply there (`tf.dynamic_partition`), each group gets its op with
  per-view factors, and the groups are stitched back; views without the jitter coin pass
  through untouched, as in `augment.view`;
* **grayscale, Gaussian blur, Sobel**: applied to the gathered views whose coin came up
  (the blur with a per-view kernel as a sum of shifted copies of the reflect-padded views).
"""

import typing

import tensorflow as tf

from psl_tf import augment


class ViewDraws(typing.NamedTuple):
  """Every random draw of one view of `augment.view` (leading axis: views)."""
  begin: tf.Tensor  # int32 [2]: top-left corner of the crop
  crop: tf.Tensor  # int32 [2]: crop height and width
  flip: tf.Tensor  # bool
  color: tf.Tensor  # bool: colour jitter applied
  factors: tf.Tensor  # float32 [4]: brightness, contrast, saturation factors, hue shift
  order: tf.Tensor  # int32 [4]: op index at each position of the jitter
  gray: tf.Tensor  # bool
  blur: tf.Tensor  # bool
  sigma: tf.Tensor  # float32
  sobel: tf.Tensor  # bool


def draw_view(image_shape, level, seed, options=augment.AugmentOptions()):
  """The draws `augment.view(image, level, size, seed, options)` makes for an image of
  `image_shape` [H, W, 3], from the same stateless ops on the same seeds. Draws that the
  level does not use are still returned (they are never applied)."""
  o = options
  seeds = augment.split(seed, 9)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
      min_object_covered=0.0, aspect_ratio_range=tuple(o.crop_ratio),
      area_range=(o.crop_min_scale, o.crop_max_scale), max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  # tf.image.stateless_random_flip_left_right's draw for one image.
  flip = tf.random.stateless_uniform([], seed=seeds[1], minval=0, maxval=1.0) < 0.5
  # augment.color_jitter's draws.
  s = float(o.color_strength)
  jitter = augment.split(seeds[3], 5)
  low, high = max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s
  hue = augment._uniform(jitter[3], -0.2 * s, 0.2 * s) if s > 0 else tf.constant(0.0)  # pylint: disable=protected-access
  factors = tf.stack([augment._uniform(jitter[0], low, high),  # pylint: disable=protected-access
                      augment._uniform(jitter[1], low, high),  # pylint: disable=protected-access
                      augment._uniform(jitter[2], low, high),  # pylint: disable=protected-access
                      hue])
  order = tf.cast(tf.argsort(tf.random.stateless_uniform([4], jitter[4])), tf.int32)
  coin = augment._coin  # pylint: disable=protected-access
  return ViewDraws(
      begin=tf.cast(begin[:2], tf.int32), crop=tf.cast(crop[:2], tf.int32),
      flip=flip if o.flip else tf.constant(False),
      color=coin(seeds[2], o.color_prob) if level >= 2 else tf.constant(False),
      factors=factors, order=order,
      gray=coin(seeds[4], o.gray_prob) if level >= 2 else tf.constant(False),
      blur=coin(seeds[5], o.blur_prob) if level >= 3 else tf.constant(False),
      sigma=augment._uniform(seeds[6], o.blur_sigma[0], o.blur_sigma[1]),  # pylint: disable=protected-access
      sobel=coin(seeds[7], o.sobel_prob) if level >= 3 else tf.constant(False))


_SIGNATURE = ViewDraws(tf.int32, tf.int32, tf.bool, tf.bool, tf.float32, tf.int32, tf.bool,
                       tf.bool, tf.float32, tf.bool)


def draw_two_views(image_shape, level, seeds, options=augment.AugmentOptions()):
  """`ViewDraws` of 2N views for seeds [N, 2]: views A of every image, then views B (the
  seed split of `augment.two_views`)."""
  def both(seed):
    seed_a, seed_b = augment.split(seed, 2)
    a = draw_view(image_shape, level, seed_a, options)
    b = draw_view(image_shape, level, seed_b, options)
    return ViewDraws(*[tf.stack([x, y]) for x, y in zip(a, b)])

  draws = tf.map_fn(both, tf.cast(seeds, tf.int64),
                    fn_output_signature=ViewDraws(*[tf.TensorSpec(None, d) for d in _SIGNATURE]))
  # [N, 2, ...] -> [2N, ...] with views A first.
  return ViewDraws(*[tf.concat([x[:, 0], x[:, 1]], axis=0) for x in draws])


# ---- batched image ops ---------------------------------------------------------------------

def _resize_table(begin, length, size):
  """Per view [V] crop start and length along one axis -> (lower, upper, weight) [V, size]
  of TF's half-pixel bilinear resize of the crop to `size`: output i samples
  (i + 0.5) * length / size - 0.5, clamped to the crop, as indices into the whole axis."""
  length_f = tf.cast(length, tf.float32)[:, None]
  scale = length_f / float(size)
  position = (tf.range(size, dtype=tf.float32)[None, :] + 0.5) * scale - 0.5
  floor = tf.floor(position)
  lower = tf.maximum(tf.cast(floor, tf.int32), 0)
  upper = tf.minimum(tf.cast(tf.math.ceil(position), tf.int32), length[:, None] - 1)
  return lower + begin[:, None], upper + begin[:, None], position - floor


def crop_resize_flip(images, draws, size):
  """Views [V, size, size, 3] float32 in [0, 1] of images [V, H, W, 3] (uint8 or float in
  [0, 1]): each view's crop box resized with half-pixel bilinear interpolation, then mirrored
  where `draws.flip`."""
  rows = _resize_table(draws.begin[:, 0], draws.crop[:, 0], size)
  cols = _resize_table(draws.begin[:, 1], draws.crop[:, 1], size)
  # The flip reads the output columns right to left.
  cols = [tf.where(draws.flip[:, None], tf.reverse(t, [1]), t) for t in cols]
  # Columns first, then rows: TF's kernel interpolates along x, then along y.
  left = augment_float(tf.gather(images, cols[0], axis=2, batch_dims=1))  # [V, H, size, 3]
  right = augment_float(tf.gather(images, cols[1], axis=2, batch_dims=1))
  x = left + (right - left) * cols[2][:, None, :, None]
  top = tf.gather(x, rows[0], axis=1, batch_dims=1)  # [V, size, size, 3]
  bottom = tf.gather(x, rows[1], axis=1, batch_dims=1)
  return top + (bottom - top) * rows[2][:, :, None, None]


def augment_float(images):
  """uint8 [0, 255] -> float32 [0, 1] as `augment.two_views` converts; float passes."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return tf.cast(images, tf.float32)


def _channel_means(x):
  """Mean over H and W per view and channel [V, 1, 1, 3] (the reduction over the last axis of a
  transposed copy; TF's CPU reduction over middle axes is slow, see jigsaw.normalize_tiles)."""
  shape = tf.shape(x)
  pixels = tf.transpose(tf.reshape(x, [shape[0], -1, 3]), [0, 2, 1])  # [V, 3, H*W]
  return tf.reduce_mean(pixels, axis=-1)[:, None, None, :]


def _brightness(x, f):
  return x * f[:, None, None, None]


def _contrast(x, f):
  mean = _channel_means(x)
  return (x - mean) * f[:, None, None, None] + mean


def _saturation(x, f):
  hsv = tf.image.rgb_to_hsv(x)
  h, s, v = tf.unstack(hsv, axis=-1)
  s = tf.clip_by_value(s * f[:, None, None], 0.0, 1.0)
  return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1))


def _hue(x, f):
  hsv = tf.image.rgb_to_hsv(x)
  h, s, v = tf.unstack(hsv, axis=-1)
  h = h + f[:, None, None]
  h = h - tf.floor(h)
  return tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1))


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)  # augment.color_jitter's op order


def color_jitter(x, draws):
  """`augment.color_jitter` on the views whose `draws.color` is set, each with its own
  factors and op order; the other views are returned unchanged."""
  shape = tf.shape(x)
  index = tf.range(shape[0])
  for position in range(4):
    # Partition 0..3: the op at this position; 4: no jitter.
    part = tf.where(draws.color, draws.order[:, position], 4)
    xs = tf.dynamic_partition(x, part, 5)
    fs = tf.dynamic_partition(draws.factors, part, 5)
    ids = tf.dynamic_partition(index, part, 5)
    outs = [tf.clip_by_value(op(xs[k], fs[k][:, k]), 0.0, 1.0)
            for k, op in enumerate(_JITTER_OPS)]
    x = tf.reshape(tf.dynamic_stitch(ids, outs + [xs[4]]), shape)
  return x


def _where_apply(mask, fn, x, *args):
  """`fn(x[mask], *args[mask])` written back into x at the masked views."""
  ids = tf.where(mask)
  out = fn(tf.gather_nd(x, ids), *[tf.gather_nd(a, ids) for a in args])
  return tf.tensor_scatter_nd_update(x, ids, out)


def _grayscale(x):
  return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3])


def _blur(x, sigma, taps):
  """augment.gaussian_blur with a per-view sigma [V]: separable, reflect padding, clipped."""
  radius = taps // 2
  t = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(t)[None, :] / (2.0 * tf.square(sigma)[:, None]))  # [V, taps]
  kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)
  padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
  width = tf.shape(x)[2]
  height = tf.shape(x)[1]
  k = kernel[:, None, None, None, :]  # [V, 1, 1, 1, taps]
  horizontal = sum(k[..., i] * padded[:, :, i:i + width] for i in range(taps))
  vertical = sum(k[..., i] * horizontal[:, i:i + height] for i in range(taps))
  return tf.clip_by_value(vertical, 0.0, 1.0)


def _sobel(x):
  """augment.sobel per view: grey, gradient magnitude over its own maximum, RGB."""
  edges = tf.image.sobel_edges(tf.image.rgb_to_grayscale(x))  # [V, H, W, 1, 2]
  magnitude = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1))  # [V, H, W, 1]
  peak = tf.reduce_max(tf.reshape(magnitude, [tf.shape(x)[0], -1]), axis=1)
  magnitude = tf.math.divide_no_nan(magnitude, peak[:, None, None, None])
  return tf.clip_by_value(tf.tile(magnitude, [1, 1, 1, 3]), 0.0, 1.0)


def views_batch(images, draws, level, size, options=augment.AugmentOptions()):
  """`augment.view` of every image [V, H, W, 3] with its draws: float32 [V, size, size, 3]."""
  augment.level_ops(level)
  x = crop_resize_flip(images, draws, size)
  if level >= 2:
    x = color_jitter(x, draws)
    x = _where_apply(draws.gray, _grayscale, x)
  if level >= 3:
    taps = augment.blur_taps(size, options.blur_kernel_fraction)
    x = _where_apply(draws.blur, lambda v, s: _blur(v, s, taps), x, draws.sigma)
    x = _where_apply(draws.sobel, _sobel, x)
  return tf.ensure_shape(x, [None, size, size, 3])


def two_views_batch(images, seeds, level, size, options=augment.AugmentOptions()):
  """`augment.two_views` of every row: images [N, H, W, 3] (uint8 or float in [0, 1]) and
  seeds [N, 2] -> float32 [N, 2, size, size, 3]."""
  draws = draw_two_views(tf.shape(images)[1:], level, seeds, options)
  views = views_batch(tf.concat([images, images], axis=0), draws, level, size, options)
  view_a, view_b = tf.split(views, 2, axis=0)
  return tf.stack([view_a, view_b], axis=1)


def two_view_batch_fn(level, size, options):
  """`Task.batch_fn` of the contrastive tasks: `(images, labels, seeds) -> (views, 0s)`."""
  augment.level_ops(level)

  def fn(images, labels, seeds):
    del labels  # self-supervised: the target is implicit in the pairing
    views = two_views_batch(images, seeds, level, size, options)
    return views, tf.zeros(tf.shape(seeds)[:1], tf.int32)
  return fn
