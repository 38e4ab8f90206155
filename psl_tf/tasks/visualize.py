r"""Pictures of a task ladder: what levels 1, 2 and 3 make of a few images (the paper's Fig. 1).

  python -m psl_tf.visualize --task=rotation                    # -> ladder_rotation.png
  python -m psl_tf.visualize --task=jigsaw --dataset=folder:/data/pets --output=jigsaw.png

One PNG per call: for each image, one row per level with the level's name on the left.
Rotation shows the image under every angle of R_k; jigsaw shows the nine tiles reassembled
in the order of a permutation every level has (index 0) and of one that level k adds to
C_{k-1}; the contrastive ladders show views under T_k, and T3's row includes a Sobel view.

The library half (`level_panels`, `input_grid`, `log_stage_inputs`) is also what each
training stage uses to put a grid of its inputs into TensorBoard (`logs/stage_<k>`, tab
Images), so a run shows exactly what its network was fed.
"""

import numpy as np

import tensorflow as tf

from psl_tf import data
from psl_tf.data import augment
from psl_tf.data import images as image_lib
from psl_tf.evaluation import report
from psl_tf.tasks import base
from psl_tf.tasks import jigsaw as jigsaw_lib


def _square(task, image):
  """The task's evaluation square of an image (float [0, 1]), before the pretext transform."""
  image = image_lib.to_float(tf.convert_to_tensor(image))
  if isinstance(task, jigsaw_lib.JigsawTask):
    return image_lib.center_crop(image_lib.resize_shorter_side(image, task.resize), task.crop)
  spec = task.image_spec
  return image_lib.center_crop(image_lib.resize_shorter_side(image, spec.resize), spec.resize)


def jigsaw_mosaic(tiles, gap=2):
  """[9, t, t, 3] tiles in slot order -> one [3t + 2 gap, 3t + 2 gap, 3] picture, white gaps."""
  tiles = np.asarray(tiles, np.float32)
  t = tiles.shape[1]
  side = 3 * t + 2 * gap
  out = np.ones((side, side, 3), np.float32)
  for slot in range(9):
    r, c = divmod(slot, 3)
    out[r * (t + gap):r * (t + gap) + t, c * (t + gap):c * (t + gap) + t] = tiles[slot]
  return out


def level_panels(task, image, level, seed=0):
  """What level `level` of `task` makes of one image.

  Args:
    task: a `psl_tf.tasks` Task (rotation, jigsaw, simclr or mocov2).
    image: uint8 or float [H, W, 3].
    level: 1..task.num_levels.
    seed: seed of the random choices (jigsaw's new permutation, the contrastive views).

  Returns:
    A list of (float32 [h, w, 3] picture in [0, 1], caption) pairs.
  """
  task.check_level(level)
  square = _square(task, image)
  if task.name == "rotation":
    return [(np.asarray(task.rotated_view(square, angle)), f"{angle}°")
            for angle in task.angles(level)]
  if isinstance(task, jigsaw_lib.JigsawTask):
    offsets = tf.fill([9, 2], (task.cell - task.tile) // 2)
    tiles = jigsaw_lib.grid_tiles(square, task.cell, task.tile, offsets)
    table = task.permutations(level)
    low = task.sizes[level - 2] if level > 1 else 1
    new = int(np.random.default_rng(seed).integers(low, len(table)))
    panels = [(jigsaw_mosaic(tiles), "tiles in order")]
    for index in (0, new):
      shuffled = tf.gather(tiles, table[index]).numpy()
      where = f"C{level}" if level == 1 or index == 0 else f"C{level} \\ C{level - 1}"
      panels.append((jigsaw_mosaic(shuffled), f"perm {index} ∈ {where}"))
    return panels
  if hasattr(task, "augment_options"):
    size = task.image_spec.size
    seeds = tf.random.experimental.stateless_split(tf.constant([seed, level], tf.int64), 4)
    panels = [(np.asarray(augment.view(square, level, size, s, task.augment_options)),
               f"view {i + 1}") for i, s in enumerate(seeds[:3])]
    if level >= 3:  # T3's Sobel view is rare (p 0.2 by default): always show one
      view = augment.view(square, 2, size, seeds[3], task.augment_options)
      panels.append((np.asarray(augment.sobel(view)), "Sobel"))
    return panels
  raise ValueError(f"no picture for task {task.name!r}")


def level_title(task, level):
  """Short row label: 'R2 = {0°, 90°, 180°, 270°}', 'C2: 1000 perms', 'T3 = {...}'."""
  if task.name == "rotation":
    return task.describe_level(level)
  if isinstance(task, jigsaw_lib.JigsawTask):
    return f"C{level}: {task.num_classes(level)} permutations"
  if hasattr(task, "augment_options"):
    return f"T{level}: " + " + ".join(augment.level_ops(level))
  return task.describe_level(level)


def ladder_figure(task, images, path, seed=0, dpi=80):
  """Writes a PNG: for each image, one row per level of `task`; returns `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (pictures only)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = [(i, level, level_panels(task, image, level, seed + i))
          for i, image in enumerate(images) for level in range(1, task.num_levels + 1)]
  columns = max(len(panels) for _, _, panels in rows)
  figure, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns + 2.6, 1.45 * len(rows)),
                              dpi=dpi, squeeze=False)
  for r, (i, level, panels) in enumerate(rows):
    for c in range(columns):
      ax = axes[r][c]
      ax.set_xticks([])
      ax.set_yticks([])
      if c >= len(panels):
        ax.axis("off")
        continue
      picture, caption = panels[c]
      ax.imshow(np.clip(picture, 0.0, 1.0), interpolation="nearest")
      ax.set_title(caption, fontsize=7, pad=2)
    axes[r][0].set_ylabel(f"image {i + 1}\n{level_title(task, level)}", fontsize=7,
                          rotation=0, ha="right", va="center", wrap=True)
  figure.suptitle(f"{task.name}: what each level of the ladder asks (levels 1 → "
                  f"{task.num_levels}, harder)", fontsize=9)
  return report.save_figure(figure, path)


# ---- TensorBoard: a grid of what a stage feeds its network ---------------------------------

def _displayable(example):
  """One training input -> a float [h, w, 3] picture in [0, 1]."""
  x = np.asarray(example, np.float32)
  if x.ndim == 4 and x.shape[0] == 9:  # jigsaw tiles, standardised per tile
    low = x.min(axis=(1, 2, 3), keepdims=True)
    high = x.max(axis=(1, 2, 3), keepdims=True)
    return jigsaw_mosaic((x - low) / np.maximum(high - low, 1e-6))
  if x.ndim == 4:  # two (or more) contrastive views side by side
    return np.concatenate(list(x), axis=1)
  return x


def input_grid(inputs, max_items=16):
  """A batch of stage inputs -> one uint8 [1, H, W, 3] grid (row-major, up to `max_items`)."""
  pictures = [_displayable(x) for x in np.asarray(inputs)[:max_items]]
  if not pictures:
    raise ValueError("no inputs to draw")
  h, w = pictures[0].shape[:2]
  cols = int(np.ceil(np.sqrt(len(pictures))))
  rows = int(np.ceil(len(pictures) / cols))
  grid = np.ones((rows * (h + 2), cols * (w + 2), 3), np.float32)
  for k, p in enumerate(pictures):
    r, c = divmod(k, cols)
    grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = p
  return (np.clip(grid, 0.0, 1.0) * 255).round().astype(np.uint8)[None]


def log_stage_inputs(logdir, task, level, source, batch_size=16, seed=0):
  """Writes a grid of one batch of level `level`'s training inputs to TensorBoard."""
  input_fn = data.make_input_fn(source, task.example_fn(level, training=True),
                                min(batch_size, 16), seed=seed, training=True, shuffle_buffer=64)
  inputs, _ = next(iter(input_fn(None)))
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    tf.summary.image(f"inputs/level_{level}", input_grid(inputs), step=0,
                     description=f"{task.name} level {level}: {task.describe_level(level)}")
  writer.close()
