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
  through untouched, as in `augment.view`. Saturation and hue are closed forms on the r, g, b
  planes (value and chroma fixed) rather than HSV round trips, equal to TF's to ~1e-6;
* **grayscale, Gaussian blur, Sobel**: applied to the gathered views whose coin came up
  (the blur with a per-view kernel as a sum of shifted copies of the reflect-padded views).
"""

import typing

import tensorflow as tf

from psl_tf.data import augment


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


# Raw draws per view, in this order (float32 in [0, 1)); `_finish` turns them into ViewDraws.
_RAW = ("flip", "color", "brightness", "contrast", "saturation", "hue", "order0", "order1",
        "order2", "order3", "gray", "blur", "sigma", "sobel")


def _uniform01(seed, shape=()):
  """`tf.random.stateless_uniform(shape, seed)` in one op instead of two (the V1 kernel
  derives Philox's key and counter from the seed as the V2 path does; same numbers)."""
  return tf.raw_ops.StatelessRandomUniform(shape=shape, seed=seed, dtype=tf.float32)


def _split(seed, num):
  """`augment.split` (`tf.random.experimental.stateless_split`) in one op."""
  return tf.unstack(tf.raw_ops.StatelessRandomUniformFullInt(shape=[num, 2], seed=seed,
                                                             dtype=tf.int64))


def _raw_view(image_shape, level, seed, options):
  """One view's crop box (int32 [2, 3]: begin and size of the 3-d slice) and its raw
  uniforms (float32 [len(_RAW)]), drawn from `augment.view`'s seeds with its stateless ops.
  Only what the level uses is drawn (zeros otherwise)."""
  o = options
  seeds = _split(seed, 9)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
      min_object_covered=0.0, aspect_ratio_range=tuple(o.crop_ratio),
      area_range=(o.crop_min_scale, o.crop_max_scale), max_attempts=100,
      use_image_if_no_bounding_boxes=True)
  box = tf.stack([tf.cast(begin, tf.int32), tf.cast(crop, tf.int32)])  # [2, 3]
  # Scalars stacked in one op, not expanded one by one: every op here runs per view.
  scalars = [_uniform01(seeds[1])]  # tf.image.stateless_random_flip_left_right's draw
  order = None
  if level >= 2:
    jitter = _split(seeds[3], 5)  # augment.color_jitter's seeds
    scalars += [_uniform01(seeds[2])] + [_uniform01(jitter[i]) for i in range(4)]
    order = _uniform01(jitter[4], [4])
    gray = _uniform01(seeds[4])
  if level >= 3:
    tail = [_uniform01(seeds[i]) for i in (5, 6, 7)]
  if level == 1:
    raw = tf.stack(scalars)
  elif level == 2:
    raw = tf.concat([tf.stack(scalars), order, gray[None]], 0)
  else:
    raw = tf.concat([tf.stack(scalars), order, tf.stack([gray] + tail)], 0)
  return box, tf.pad(raw, [[0, len(_RAW) - raw.shape[0]]])


def _scaled(u, low, high):
  """`tf.random.stateless_uniform([], seed, low, high)` from its raw draw u: the same
  float32 arithmetic."""
  return u * (tf.constant(high, tf.float32) - tf.constant(low, tf.float32)) + tf.constant(
      low, tf.float32)


def _finish(box, raw, level, options):
  """ViewDraws of views [V] from their boxes [V, 2, 3] and raw uniforms [V, len(_RAW)]."""
  o = options
  u = dict(zip(_RAW, tf.unstack(raw, axis=1)))
  none = tf.zeros_like(u["flip"], tf.bool)
  s = float(o.color_strength)
  low, high = max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s
  hue = _scaled(u["hue"], -0.2 * s, 0.2 * s) if s > 0 else tf.zeros_like(u["hue"])
  return ViewDraws(
      begin=box[:, 0, :2], crop=box[:, 1, :2],
      flip=u["flip"] < 0.5 if o.flip else none,
      color=u["color"] < o.color_prob if level >= 2 else none,
      factors=tf.stack([_scaled(u["brightness"], low, high), _scaled(u["contrast"], low, high),
                        _scaled(u["saturation"], low, high), hue], axis=1),
      order=tf.cast(tf.argsort(raw[:, 6:10], axis=1), tf.int32),
      gray=u["gray"] < o.gray_prob if level >= 2 else none,
      blur=u["blur"] < o.blur_prob if level >= 3 else none,
      sigma=_scaled(u["sigma"], o.blur_sigma[0], o.blur_sigma[1]),
      sobel=u["sobel"] < o.sobel_prob if level >= 3 else none)


def draw_two_views(image_shape, level, seeds, options=augment.AugmentOptions()):
  """`ViewDraws` of 2N views for seeds [N, 2]: views A of every image, then views B, with the
  draws `augment.two_views(image, level, size, seeds[i], options)` makes. Only the seed
  splits, the crop boxes and the raw uniforms are drawn image by image (one `tf.map_fn`);
  scaling, coins and orders are computed for all views at once."""
  augment.level_ops(level)

  def both(seed):
    seed_a, seed_b = _split(seed, 2)
    box_a, raw_a = _raw_view(image_shape, level, seed_a, options)
    box_b, raw_b = _raw_view(image_shape, level, seed_b, options)
    return tf.stack([box_a, box_b]), tf.stack([raw_a, raw_b])

  boxes, raws = tf.map_fn(both, tf.cast(seeds, tf.int64),
                          fn_output_signature=(tf.int32, tf.float32))
  # [N, 2, k] -> [2N, k] with views A first.
  boxes = tf.concat([boxes[:, 0], boxes[:, 1]], axis=0)
  raws = tf.concat([raws[:, 0], raws[:, 1]], axis=0)
  return _finish(boxes, raws, level, options)


# ---- batched image ops ---------------------------------------------------------------------
#
# After the crop the views are kept planar, [V, 3, size, size] (r, g and b planes), so every
# colour op is a few elementwise ops on whole planes and every reduction runs over the last
# axes; one transpose at the end gives the [V, size, size, 3] the backbone takes.

def _resize_table(begin, length, size):
  """Per view [V] crop start and length along one axis -> (lower, upper, weight) [V, size]
  of TF's half-pixel bilinear resize of the crop to `size`: output i samples
  (i + 0.5) * length / size - 0.5, clamped to the crop, as indices into the whole axis."""
  scale = tf.cast(length, tf.float32)[:, None] / float(size)
  position = (tf.range(size, dtype=tf.float32)[None, :] + 0.5) * scale - 0.5
  floor = tf.floor(position)
  lower = tf.maximum(tf.cast(floor, tf.int32), 0)
  upper = tf.minimum(tf.cast(tf.math.ceil(position), tf.int32), length[:, None] - 1)
  return lower + begin[:, None], upper + begin[:, None], position - floor


def to_float(images):
  """uint8 [0, 255] -> float32 [0, 1] as `augment.two_views` converts; float passes."""
  if images.dtype == tf.uint8:
    return tf.cast(images, tf.float32) / 255.0
  return tf.cast(images, tf.float32)


def crop_resize_flip(images, draws, size):
  """Planar views [V, 3, size, size] float32 in [0, 1] of images [V, H, W, 3] (uint8, or
  float in [0, 1]): each view's crop box resized with TF's half-pixel bilinear interpolation
  (along x, then along y, as its kernel does), mirrored where `draws.flip`."""
  rows = _resize_table(draws.begin[:, 0], draws.crop[:, 0], size)
  cols = _resize_table(draws.begin[:, 1], draws.crop[:, 1], size)
  # The flip reads the output columns right to left.
  cols = [tf.where(draws.flip[:, None], tf.reverse(t, [1]), t) for t in cols]
  # Gathers along axis 1 copy contiguous slices (fast); gathering along a middle axis is not.
  x = tf.transpose(images, [0, 2, 3, 1])  # [V, W, 3, H]
  left = to_float(tf.gather(x, cols[0], axis=1, batch_dims=1))  # [V, size, 3, H]
  right = to_float(tf.gather(x, cols[1], axis=1, batch_dims=1))
  x = left + (right - left) * cols[2][:, :, None, None]
  x = tf.transpose(x, [0, 3, 2, 1])  # [V, H, 3, size]
  top = tf.gather(x, rows[0], axis=1, batch_dims=1)  # [V, size, 3, size]
  bottom = tf.gather(x, rows[1], axis=1, batch_dims=1)
  x = top + (bottom - top) * rows[2][:, :, None, None]
  return tf.transpose(x, [0, 2, 1, 3])  # [V, 3, size, size]


def _per_view(f):
  return f[:, None, None, None]


def _brightness(x, f):
  return x * _per_view(f)


def _contrast(x, f):
  """tf.image.adjust_contrast per view: (x - mean) * f + mean, mean per view and channel."""
  mean = tf.reduce_mean(x, axis=[2, 3], keepdims=True)
  return (x - mean) * _per_view(f) + mean


def _max_min(x):
  r, g, b = x[:, 0], x[:, 1], x[:, 2]
  return tf.maximum(tf.maximum(r, g), b), tf.minimum(tf.minimum(r, g), b)


def _saturation(x, f):
  """tf.image.adjust_saturation per view, without the HSV round trip: with hue and value
  fixed every channel is v - (v - c) * s'/s, and s'/s = min(f, 1/s) = min(f, v / chroma)."""
  v, m = _max_min(x)
  chroma = (v - m)[:, None]
  v = v[:, None]
  ratio = tf.where(chroma > 0.0,
                   tf.minimum(_per_view(f), tf.math.divide_no_nan(v, chroma)), 1.0)
  return v - (v - x) * ratio


_HUE_OFFSETS = (5.0, 3.0, 1.0)  # r, g, b in HSV -> RGB: c = v - chroma * clip(min(k, 4 - k))


def _hue(x, f):
  """tf.image.adjust_hue per view, without the HSV round trip: the hue (in sixths) from
  the channels as TF's kernel computes it, shifted by 6 f, and each channel from the
  shifted hue with the same value and chroma."""
  r, g, b = x[:, 0], x[:, 1], x[:, 2]
  v, m = _max_min(x)
  chroma = v - m
  inv = tf.math.divide_no_nan(1.0, chroma)
  hue = tf.where(tf.equal(r, v), (g - b) * inv,
                 tf.where(tf.equal(g, v), 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
  hue = (hue + 6.0 * f[:, None, None])[:, None]
  k = hue + tf.constant(_HUE_OFFSETS)[None, :, None, None]  # [V, 3, H, W]
  k = k - 6.0 * tf.floor(k / 6.0)
  return v[:, None] - chroma[:, None] * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)  # augment.color_jitter's op order


def color_jitter(x, draws):
  """`augment.color_jitter` on the planar views whose `draws.color` is set, each with its own
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


def _luma(x):
  """tf.image.rgb_to_grayscale's weights: [V, H, W]."""
  return x[:, 0] * 0.2989 + x[:, 1] * 0.5870 + x[:, 2] * 0.1140


def _grayscale(x):
  return tf.tile(_luma(x)[:, None], [1, 3, 1, 1])


def _blur(x, sigma, taps):
  """augment.gaussian_blur with a per-view sigma [V]: separable, reflect padding, clipped."""
  radius = taps // 2
  t = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(t)[None, :] / (2.0 * tf.square(sigma)[:, None]))  # [V, taps]
  kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)
  height, width = tf.shape(x)[2], tf.shape(x)[3]
  padded = tf.pad(x, [[0, 0], [0, 0], [radius, radius], [radius, radius]], mode="REFLECT")
  k = [_per_view(kernel[:, i]) for i in range(taps)]
  horizontal = tf.add_n([k[i] * padded[:, :, :, i:i + width] for i in range(taps)])
  vertical = tf.add_n([k[i] * horizontal[:, :, i:i + height] for i in range(taps)])
  return tf.clip_by_value(vertical, 0.0, 1.0)


def _sobel(x):
  """augment.sobel per view: grey, tf.image.sobel_edges' kernels with reflect padding,
  gradient magnitude over its own maximum, replicated over the three planes."""
  p = tf.pad(_luma(x), [[0, 0], [1, 1], [1, 1]], mode="REFLECT")
  # [1, 2, 1] smoothing across, [-1, 0, 1] difference along each axis.
  rows = p[:, :, :-2] + 2.0 * p[:, :, 1:-1] + p[:, :, 2:]  # smoothed along x
  dy = rows[:, 2:] - rows[:, :-2]
  cols = p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]  # smoothed along y
  dx = cols[:, :, 2:] - cols[:, :, :-2]
  magnitude = tf.sqrt(dy * dy + dx * dx)  # [V, H, W]
  peak = tf.reduce_max(magnitude, axis=[1, 2], keepdims=True)
  magnitude = tf.clip_by_value(tf.math.divide_no_nan(magnitude, peak), 0.0, 1.0)
  return tf.tile(magnitude[:, None], [1, 3, 1, 1])


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
  return tf.ensure_shape(tf.transpose(x, [0, 2, 3, 1]), [None, size, size, 3])


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
