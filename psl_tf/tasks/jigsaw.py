"""Multi-level jigsaw puzzles (paper 3.3.1): predict which permutation of C_k shuffled 9 tiles.

Pipeline (Noroozi & Favaro 2016, sizes are options): shorter side resized to `resize` (256),
a random `crop` x `crop` square (225) and horizontal flip, a 3x3 grid of `cell` px cells (75),
a random `tile` px tile (64) inside each cell, the 9 tiles shuffled by a permutation drawn
uniformly from C_k; the target is its index. The levels C1 ⊂ C2 ⊂ C3 are prefixes of one
greedy maximal-Hamming sequence (`psl_tf.tasks.permutations`), so index i is the same
permutation at every level.

Convention: with permutation p, output position i holds the tile of grid cell p[i] (cells
numbered row by row). Undo it with ``grid[p[i]] = shuffled[i]``.

Shortcut guards: the gap between tiles (cell - tile px, random per tile) hides edge continuity;
each tile is normalised on its own (per-channel mean and std), so brightness and contrast do
not line up across tiles; optional per-tile colour jitter and grayscale (Goyal et al. 2019)
disturb the colour cues further.

The Siamese network: the 9 tiles of N puzzles run as ONE batch of 9N through the stage's
trunk (`ctx.features`: shared weights, stop-gradient at the stage input), each tile's map is
average-pooled, and the 9 vectors are concatenated in puzzle order and classified over C_k by
the stage's head. We read the paper's "stacked along the channels" as this shared-trunk
batching, the design of Noroozi & Favaro and of Goyal et al.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from psl_tf import options as options_lib
from psl_tf.models import blocks as blocks_lib
from psl_tf.data import images as image_lib
from psl_tf.tasks import base
from psl_tf.tasks import permutations as perms_lib

GRID = 3
NUM_TILES = GRID * GRID


def _as_sizes(sizes):
  if isinstance(sizes, str):
    sizes = [s for s in sizes.replace(" ", "").split(",") if s]
  try:
    return tuple(int(s) for s in sizes)
  except ValueError:
    raise ValueError(f"jigsaw sizes must be whole numbers like 500,1000,2000, got {sizes}") from None


def grid_tiles(square, cell, tile, offsets):
  """Cuts a [3*cell, 3*cell, C] square into 9 tiles, one per cell, in grid (row-major) order.

  Args:
    square: float [3 * cell, 3 * cell, C].
    cell: side of a grid cell.
    tile: side of a tile (<= cell).
    offsets: int32 [9, 2], (row, column) of each tile inside its cell, in [0, cell - tile].

  Returns:
    float [9, tile, tile, C].
  """
  channels = square.shape[-1]
  cells = tf.reshape(square, [GRID, cell, GRID, cell, channels])
  cells = tf.reshape(tf.transpose(cells, [0, 2, 1, 3, 4]), [NUM_TILES, cell, cell, channels])
  span = tf.range(tile, dtype=tf.int32)
  rows = offsets[:, 0:1] + span[None, :]  # [9, tile]
  cols = offsets[:, 1:2] + span[None, :]
  tiles = tf.gather(cells, rows, axis=1, batch_dims=1)  # [9, tile, cell, C]
  return tf.gather(tiles, cols, axis=2, batch_dims=1)  # [9, tile, tile, C]


def normalize_tiles(tiles, eps=1e-3):
  """Per-tile, per-channel standardisation, expressed in the backbone's [0, 1] input space.

  Each tile gets zero mean and unit std per channel, then the ImageNet mean/std that `b1`
  removes are put back, so what the first convolution sees is exactly the tile's own z-score.
  """
  # The moments over the two spatial axes are taken along the last axis of a transposed
  # copy: TF's CPU reduction over middle axes of a [9N, t, t, 3] tensor (tf.nn.moments'
  # axes=[1, 2]) took ~2 ms per CIFAR puzzle, most of the jigsaw pipeline's time; this ~20 us.
  shape = tf.shape(tiles)
  pixels = tf.transpose(tf.reshape(tiles, [shape[0], -1, shape[-1]]), [0, 2, 1])  # [N, C, P]
  mean = tf.reduce_mean(pixels, axis=-1, keepdims=True)
  variance = tf.reduce_mean(tf.square(pixels - mean), axis=-1, keepdims=True)
  mean = tf.transpose(mean, [0, 2, 1])[:, None]  # [N, 1, 1, C]
  variance = tf.transpose(variance, [0, 2, 1])[:, None]
  z = (tiles - mean) / tf.sqrt(variance + eps * eps)
  return (z * tf.constant(blocks_lib.IMAGENET_STD, tiles.dtype) +
          tf.constant(blocks_lib.IMAGENET_MEAN, tiles.dtype))


def jitter_tile(tile, seed, strength, grayscale):
  """Colour jitter of strength `strength` and grayscale with probability `grayscale`."""
  seeds = image_lib.split_seed(seed, 5)
  if strength > 0:
    tile = tf.image.stateless_random_brightness(tile, 0.4 * strength, seeds[0])
    tile = tf.image.stateless_random_contrast(tile, 1 - 0.4 * strength, 1 + 0.4 * strength,
                                              seeds[1])
    tile = tf.image.stateless_random_saturation(tile, 1 - 0.4 * strength, 1 + 0.4 * strength,
                                                seeds[2])
    tile = tf.image.stateless_random_hue(tile, min(0.1 * strength, 0.5), seeds[3])
    tile = tf.clip_by_value(tile, 0.0, 1.0)
  if grayscale > 0:
    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(tile))
    use = tf.random.stateless_uniform([], seeds[4]) < grayscale
    tile = tf.where(use, gray, tile)
  return tile


def scaled_sizes(image_size, resize=0, crop=0, cell=0, tile=0):
  """(resize, crop, cell, tile) with each 0 scaled from `image_size` by the paper's ratios."""
  cell = cell or max(2, round(image_size * 75 / 224))
  crop = crop or GRID * cell
  tile = tile or max(1, round(cell * 64 / 75))
  resize = resize or round(crop * 256 / 225)
  return int(resize), int(crop), int(cell), int(tile)


class JigsawTask(base.Task):
  """Predict the index, within C_k, of the permutation that shuffled the 9 tiles.

  Args:
    image_spec: whole-image geometry (for the evaluation view and export only).
    head_hidden: width of the per-tile and joint hidden layers of the head (0: linear).
    options / keywords (`JigsawTask.Options`, flags `--jigsaw_<option>`):
    sizes: set sizes of the levels, increasing (default the demo's 24,48,96; the paper's
      500,1000,2000 are in the jigsaw_imagenet_paper recipe).
    resize: shorter side before cropping.
    crop: side of the random square crop; must be 3 * cell.
    cell: side of a grid cell.
    tile: side of the tile taken inside each cell.
      A size given as 0 is scaled from `image_spec.size` with the paper's ratios (cell
      75/224 of it, crop 3 cells, tile 64/75 of a cell, resize 256/225 of the crop): 224 gives
      the paper's 256/225/75/64, 96 gives 109/96/32/27, 64 gives 72/63/21/18.
    criterion: 'average' (Noroozi & Favaro) or 'maxmin' selection of the permutations.
    perm_seed: seed of the greedy sequence (its start and tie-breaking).
    normalize: standardise each tile on its own.
    color_jitter: strength of per-tile colour jitter (0: off).
    grayscale: probability of turning a tile grayscale (0: off).
    cache_dir: permutation cache ('' for the default `~/.cache/psl_tf`).
  """

  name = "jigsaw"
  num_levels = 3

  @dataclasses.dataclass(frozen=True)
  class Options:
    flag_prefix = "jigsaw"
    sizes: tuple = options_lib.option(
        (24, 48, 96), "Permutation set sizes of levels C1, C2, C3 (prefixes of one greedy "
        "sequence). The default is the demo's, small enough to learn in minutes; the paper's "
        "500,1000,2000 are in --recipe=jigsaw_imagenet_paper.")
    criterion: str = options_lib.option(
        "average", "Greedy permutation selection: maximise the average Hamming distance "
        "(Noroozi & Favaro) or the minimum one.", choices=perms_lib.CRITERIA)
    perm_seed: int = options_lib.option(0, "Seed of the greedy permutation sequence.",
                                       range=(0, 2**31 - 1))
    # Tile geometry; 0 scales it from --image_size by the paper's ratios (224 -> 256/225/75/64).
    resize: int = options_lib.option(0, "Jigsaw: shorter side before the random crop.",
                                    range=(0, 4096))
    crop: int = options_lib.option(0, "Jigsaw: side of the random square crop (3 x cell).",
                                  range=(0, 4096))
    cell: int = options_lib.option(0, "Jigsaw: side of a cell of the 3x3 grid.", range=(0, 4096))
    tile: int = options_lib.option(0, "Jigsaw: side of the random tile inside each cell.",
                                  range=(0, 4096))
    normalize: bool = options_lib.option(True, "Jigsaw: standardise each tile on its own.")
    color_jitter: float = options_lib.option(0.0, "Jigsaw: per-tile colour jitter strength "
                                            "(0: off).", range=(0.0, 10.0))
    grayscale: float = options_lib.option(0.0, "Jigsaw: probability of a grayscale tile.",
                                         range=(0.0, 1.0))
    cache_dir: str = options_lib.option("", "Jigsaw: permutation cache directory (empty: "
                                       "$PSL_TF_CACHE or ~/.cache/psl_tf).", resume_safe=True)

  def __init__(self, image_spec=base.ImageSpec(), head_hidden=512, options=None, head_grid=1,
               **overrides):
    super().__init__(image_spec, head_hidden, options, head_grid, **overrides)
    o = self.options
    sizes, resize, crop, cell, tile = o.sizes, o.resize, o.crop, o.cell, o.tile
    criterion, perm_seed, normalize = o.criterion, o.perm_seed, o.normalize
    color_jitter, grayscale, cache_dir = o.color_jitter, o.grayscale, o.cache_dir
    self.sizes = _as_sizes(sizes)
    if len(self.sizes) != self.num_levels:
      raise ValueError(f"--jigsaw_sizes needs {self.num_levels} set sizes (one per level), "
                       f"got {len(self.sizes)}: {','.join(map(str, self.sizes))}")
    resize, crop, cell, tile = scaled_sizes(image_spec.size, resize, crop, cell, tile)
    if not 0 < tile <= cell:
      raise ValueError(f"--jigsaw_tile={tile} must be positive and at most --jigsaw_cell={cell}")
    if crop != GRID * cell:
      raise ValueError(f"--jigsaw_crop={crop} must be 3 x --jigsaw_cell ({GRID * cell}); "
                       "set them together, e.g. 225/75 or 96/32")
    if resize < crop:
      raise ValueError(f"--jigsaw_resize={resize} must be at least --jigsaw_crop={crop}")
    self.resize, self.crop, self.cell, self.tile = int(resize), int(crop), int(cell), int(tile)
    self.criterion = criterion
    self.perm_seed = int(perm_seed)
    self.normalize = bool(normalize)
    self.color_jitter = float(color_jitter)
    self.grayscale = float(grayscale)
    self.cache_dir = cache_dir or None
    # Checked now (a bad size fails before any model is built); the set itself is built lazily.
    perms_lib.check_sizes(self.sizes)
    self._sequence = None
    self._stats = {}

  # ---- permutation sets ------------------------------------------------------------------
  def permutations(self, level=None):
    """The set C_level as int64 [size, 9] (the largest set when level is None)."""
    if self._sequence is None:
      self._sequence = perms_lib.load_or_build(self.sizes[-1], self.perm_seed, self.criterion,
                                               self.cache_dir)
    if level is None:
      return self._sequence
    self.check_level(level)
    return self._sequence[:self.sizes[level - 1]]

  def hamming(self, level):
    """(average, minimum) pairwise Hamming distance of C_level."""
    if level not in self._stats:
      self._stats[level] = perms_lib.hamming_stats(self.permutations(level))
    return self._stats[level]

  def num_classes(self, level):
    return self.sizes[level - 1]

  def describe_level(self, level):
    average, minimum = self.hamming(level)
    return (f"C{level}: {self.num_classes(level)} permutations ({self.criterion}), "
            f"Hamming avg {average:.3f} min {minimum}; tiles {self.tile} px in "
            f"{self.cell} px cells of a {self.crop} px crop")

  def level_summary(self, level):
    average, minimum = self.hamming(level)
    return {"permutations": self.num_classes(level), "hamming_average": round(average, 4),
            "hamming_min": minimum, "permutation_criterion": self.criterion}

  def write_artifacts(self, workdir):
    """Writes the largest set, C3, as `permutations.npy` (row i = permutation i); every
    level's set is a prefix of it."""
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(f"{workdir}/permutations.npy", "wb") as f:
      np.save(f, self.permutations())

  # ---- data --------------------------------------------------------------------------------
  def example_fn(self, level, training):
    """`(image, label, seed) -> (tiles float [9, tile, tile, 3], permutation index)`."""
    table = tf.constant(self.permutations(level), tf.int32)
    num = self.num_classes(level)
    resize, crop, cell, tile = self.resize, self.crop, self.cell, self.tile
    normalize, strength, gray = self.normalize, self.color_jitter, self.grayscale

    def fn(image, label, seed):
      del label  # the pretext target is the permutation index
      crop_seed, flip_seed, offset_seed, perm_seed, jitter_seed = image_lib.split_seed(seed, 5)
      image = image_lib.resize_shorter_side(image_lib.to_float(image), resize)
      if training:
        square = image_lib.random_square_crop(image, crop, crop_seed)
        square = tf.image.stateless_random_flip_left_right(square, flip_seed)
        offsets = tf.random.stateless_uniform([NUM_TILES, 2], offset_seed, 0, cell - tile + 1,
                                              dtype=tf.int32)
      else:
        square = image_lib.center_crop(image, crop)
        offsets = tf.fill([NUM_TILES, 2], (cell - tile) // 2)
      square = tf.ensure_shape(square, [crop, crop, 3])
      tiles = grid_tiles(square, cell, tile, offsets)
      if strength > 0 or gray > 0:
        seeds = tf.random.experimental.stateless_split(tf.cast(jitter_seed, tf.int64), NUM_TILES)
        tiles = tf.map_fn(lambda args: jitter_tile(args[0], args[1], strength, gray),
                          (tiles, seeds), fn_output_signature=tf.float32)
      if normalize:
        tiles = normalize_tiles(tiles)
      target = tf.random.stateless_uniform([], perm_seed, 0, num, dtype=tf.int32)
      shuffled = tf.gather(tiles, table[target])
      return tf.ensure_shape(shuffled, [NUM_TILES, tile, tile, 3]), target

    return fn

  def batch_fn(self, level, training):
    """`example_fn` for a batch of equal-sized images: one resize per batch, then every tile
    of every puzzle (crop, flip, cell, tile offset and permutation folded into one index per
    pixel) in a single gather, and the tile normalisation over the batch. Equal to stacking
    `example_fn` (same per-image random draws). None with per-tile colour jitter or grayscale,
    which stay per tile, and for the evaluation view."""
    if not training or self.color_jitter > 0 or self.grayscale > 0:
      return None
    table = tf.constant(self.permutations(level), tf.int32)
    num = self.num_classes(level)
    resize, crop, cell, tile, normalize = (self.resize, self.crop, self.cell, self.tile,
                                           self.normalize)
    grid = np.arange(NUM_TILES)
    cell_rows = tf.constant((grid // GRID) * cell, tf.int32)  # [9] top of each grid cell
    cell_cols = tf.constant((grid % GRID) * cell, tf.int32)
    span = tf.range(tile, dtype=tf.int32)

    def fn(images, labels, seeds):
      del labels
      images = image_lib.resize_shorter_side_batch(image_lib.to_float(images), resize)
      shape = tf.shape(images)[1:]

      def draws(seed):
        crop_seed, flip_seed, offset_seed, perm_seed, _ = image_lib.split_seed(seed, 5)
        corner = image_lib.random_crop_offset(shape, crop, crop_seed)
        flip = image_lib.random_flip_coin(flip_seed)
        offsets = tf.random.stateless_uniform([NUM_TILES, 2], offset_seed, 0, cell - tile + 1,
                                              dtype=tf.int32)
        target = tf.random.stateless_uniform([], perm_seed, 0, num, dtype=tf.int32)
        return corner, flip, offsets, target

      corners, flips, offsets, targets = tf.map_fn(
          draws, seeds, fn_output_signature=(tf.int32, tf.bool, tf.int32, tf.int32))
      # Square coordinates of pixel (r, c) of the tile of grid cell j: [B, 9, tile].
      rows = cell_rows[None, :, None] + offsets[:, :, 0:1] + span[None, None, :]
      cols = cell_cols[None, :, None] + offsets[:, :, 1:2] + span[None, None, :]
      # The flip mirrors the square; the crop's corner places it in the image.
      cols = tf.where(flips[:, None, None], crop - 1 - cols, cols)
      rows = rows + corners[:, 0, None, None]
      cols = cols + corners[:, 1, None, None]
      # Position i of puzzle b holds the tile of cell table[target_b][i].
      order = tf.gather(table, targets)  # [B, 9]
      rows = tf.gather(rows, order, batch_dims=1)
      cols = tf.gather(cols, order, batch_dims=1)
      batch = tf.shape(images)[0]
      b = tf.broadcast_to(tf.range(batch)[:, None, None, None], [batch, NUM_TILES, tile, tile])
      r = tf.broadcast_to(rows[:, :, :, None], [batch, NUM_TILES, tile, tile])
      c = tf.broadcast_to(cols[:, :, None, :], [batch, NUM_TILES, tile, tile])
      tiles = tf.gather_nd(images, tf.stack([b, r, c], axis=-1))  # [B, 9, tile, tile, 3]
      if normalize:
        tiles = tf.reshape(normalize_tiles(tf.reshape(tiles, [-1, tile, tile, 3])),
                           [-1, NUM_TILES, tile, tile, 3])
      return tf.ensure_shape(tiles, [None, NUM_TILES, tile, tile, 3]), targets

    return fn

  # ---- model -------------------------------------------------------------------------------
  def build_head(self, feature_shape, level):
    """Head over the 9 pooled tile vectors [N, 9, C] in puzzle order.

    As in Noroozi & Favaro: a per-tile layer shared by the 9 tiles (fc6), the 9 outputs
    concatenated in puzzle order, a joint layer (fc7) and the classifier over C_level.
    """
    # Each tile's map is pooled (globally, or to a head_grid x head_grid grid) in `forward`.
    channels = feature_shape[-1] * self.head_grid ** 2
    inputs = keras.Input((NUM_TILES, channels))
    x = inputs
    if self.head_hidden:
      x = keras.layers.Dense(self.head_hidden, use_bias=False, name="per_tile")(x)
      x = keras.layers.BatchNormalization(momentum=0.9)(x)
      x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten(name="concat_tiles")(x)
    if self.head_hidden:
      x = keras.layers.Dense(self.head_hidden, use_bias=False, name="joint")(x)
      x = keras.layers.BatchNormalization(momentum=0.9)(x)
      x = keras.layers.ReLU()(x)
    logits = keras.layers.Dense(self.num_classes(level), name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=f"head_{self.name}_l{level}")

  def forward(self, ctx, inputs, training):
    """Runs the 9N tiles as one batch through the shared trunk, then the head."""
    tile_shape = inputs.shape[-3:]
    flat = keras.ops.reshape(inputs, (-1, *tile_shape))  # [9N, t, t, 3], puzzle-major
    maps = ctx.features(flat, training)
    pooled = base.grid_pool(maps, self.head_grid)  # [9N, C * head_grid^2]
    per_puzzle = keras.ops.reshape(pooled, (-1, NUM_TILES, pooled.shape[-1]))
    return ctx.head(per_puzzle, training=training)
