"""Image sources (TFDS, image folders, the offline demo set) and the per-replica input_fn.

A source yields ``(image uint8 [H, W, 3], label int64)`` pairs; a task's per-example map then
turns each pair into the stage's ``(inputs, targets)``. Randomness in the maps is stateless and
seeded by ``(seed, pipeline id, example counter)``, so pipelines are reproducible.
"""

import concurrent.futures
import dataclasses
import functools
import os
import socket
import urllib.parse
import urllib.request
from typing import Any, Callable

from absl import logging
import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IMAGE_CHECKS = ("full", "header", "none")

# scikit-image's bundled sample photographs: real pictures that install with a PyPI wheel, so
# the default run needs no network. Label = which photograph a crop came from.
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
               "immunohistochemistry", "stereo_motorcycle", "retina", "camera", "grass")
DEMO_SIZE = 96
DEMO_SPLITS = {"train": (1000, 1), "test": (200, 2), "validation": (200, 2)}


@dataclasses.dataclass
class Source:
  """Where images come from.

  Attributes:
    name: the --dataset value.
    elements: a cheap dataset (file names, indices, or decoded records) to shuffle and shard.
    decode: maps one element to (image uint8 [H, W, 3], label int64).
    num_examples: size of the split, when known.
    num_classes: number of labels, when known (None for unlabelled data).
    skipped: files found unreadable and left out.
  """
  name: str
  elements: tf.data.Dataset
  decode: Callable[..., Any]
  num_examples: int | None
  num_classes: int | None
  skipped: int = 0
  in_memory: bool = False  # elements are decoded uint8 images (decode is the identity)

  def images(self):
    """The decoded (image, label) dataset in source order, for evaluation."""
    return self.elements.map(self.decode, num_parallel_calls=tf.data.AUTOTUNE)


class DataError(ValueError):
  """A data set the user named cannot be used; the message says why."""


class ClassMismatchError(DataError):
  """A split has classes the training split does not: its labels cannot be right."""


def load_source(dataset, split="train", data_dir=None, image_check="full"):
  """Opens `dataset` ('demo', 'folder:PATH' or a TFDS name) at `split`."""
  if dataset == "demo":
    return demo_source(split)
  if dataset.startswith("folder:"):
    return folder_source(dataset[len("folder:"):], split, image_check)
  return tfds_source(dataset, split, data_dir)


# ---- demo --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _demo_photos():
  import skimage.data  # pylint: disable=g-import-not-at-top  (heavy; only the demo needs it)
  photos = []
  for name in DEMO_PHOTOS:
    image = getattr(skimage.data, name)()
    image = np.asarray(image[0] if isinstance(image, tuple) else image)  # stereo: left view
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    photos.append(image[..., :3].astype(np.uint8))
  return photos


@functools.lru_cache(maxsize=None)
def demo_arrays(split):
  """Deterministic square crops of the demo photographs, resized to DEMO_SIZE.

  Returns (images uint8 [N, DEMO_SIZE, DEMO_SIZE, 3], labels int64 [N]); labels name the
  source photograph. Train and test crops come from different seeds.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if split not in DEMO_SPLITS:
    raise DataError(f"demo has splits {sorted(DEMO_SPLITS)}, not {split!r}")
  count, seed = DEMO_SPLITS[split]
  rng = np.random.default_rng(seed)
  photos = _demo_photos()
  images = np.empty((count, DEMO_SIZE, DEMO_SIZE, 3), np.uint8)
  labels = np.arange(count, dtype=np.int64) % len(photos)
  for i, label in enumerate(labels):
    photo = photos[label]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    images[i] = np.asarray(crop.resize((DEMO_SIZE, DEMO_SIZE), Image.BILINEAR))
  return images, labels


def demo_source(split):
  images, labels = demo_arrays(split)
  elements = tf.data.Dataset.from_tensor_slices((images, labels))
  return Source("demo", elements, lambda image, label: (image, label), len(labels),
                len(DEMO_PHOTOS), in_memory=True)


def load_heldout_source(dataset, split="auto", data_dir=None, image_check="full",
                        train_split="train"):
  """The split a run's pretext accuracy is measured on, or None if there is none.

  split: 'auto' (the first of test / validation the data set has, other than the training
  split), 'none', or a split name (which must exist).
  """
  if split == "none":
    return None
  if split != "auto":
    return load_source(dataset, split, data_dir, image_check)
  for name in ("test", "validation"):
    if name == train_split:
      continue
    try:
      return load_source(dataset, name, data_dir, image_check)
    except ClassMismatchError:
      raise
    except ValueError:  # DataError: the data set has no such split
      continue
  return None


# ---- image folders -----------------------------------------------------------------------

# The formats tf.io.decode_image reads, by their first bytes. A file PIL reads but TensorFlow
# does not (a TIFF named .png, say) would pass a PIL check and then vanish in the pipeline.
_TF_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _check_image(path, mode):
  """True if `path` is an image the input pipeline can decode.

  mode: 'full' decodes it with the pipeline's own decoder (`_decode_file`); 'header' checks
  that it is a format TensorFlow decodes and that PIL can parse its header; 'none' only
  that it is not empty.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    if os.path.getsize(path) == 0:
      return False
    if mode == "none":
      return True
    with open(path, "rb") as f:
      if not f.read(4).startswith(_TF_IMAGE_MAGIC):
        return False
    if mode == "header":
      with Image.open(path) as image:
        image.verify()
    else:
      image, _ = _decode_file(tf.constant(path), tf.constant(0, tf.int64))
      if min(image.shape[:2]) < 1:
        return False
    return True
  except Exception:  # pylint: disable=broad-except  (any failure means: skip this file)
    return False


def _folder_root(path, split):
  if not os.path.isdir(path):
    raise DataError(f"folder:{path} is not a readable directory")
  aliases = {"validation": ("validation", "val", "test"), "test": ("test", "val", "validation")}
  for name in aliases.get(split, (split,)):
    if os.path.isdir(os.path.join(path, name)):
      return os.path.join(path, name)
  if split == "train":
    return path
  raise DataError(f"folder:{path} has no {split!r} sub-folder for the {split} split")


# Folders that are never a class: macOS resource forks of a zip, and hidden folders
# (`.ipynb_checkpoints`, `.DS_Store`-style tool output, `.git`).
_NOT_CLASS_FOLDERS = ("__MACOSX",)


def _ignored_name(name):
  return name.startswith(".") or name in _NOT_CLASS_FOLDERS


def class_folders(root):
  """(class names sorted, ignored entries) of the class folders under `root`.

  Hidden folders (a name starting with '.') and `__MACOSX` are not classes; nor is a
  folder that resolves to `root` itself or to a folder above it (a symlink loop such as
  `loop -> ..`), which would hold every other class's images. A symlink to a missing
  target is not a directory and not a class either."""
  real_root = os.path.realpath(root)
  names, ignored = [], []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if not os.path.isdir(path):
      continue
    if _ignored_name(name):
      ignored.append(name)
      continue
    real = os.path.realpath(path)
    if real == real_root or real_root.startswith(real.rstrip(os.sep) + os.sep):
      ignored.append(name)  # a loop back to the tree: not a class
      continue
    names.append(name)
  return names, ignored


def folder_class_names(path):
  """The class names of `folder:PATH`, taken from its training split: the labels of every
  split (label = index in this list)."""
  return class_folders(_folder_root(path, "train"))[0]


def list_image_folder(path, split="train", image_check="full"):
  """Files and labels of an image tree; class sub-folders of the training split (sorted)
  give the labels of every split.

  Returns (files, labels, class_names, skipped), class_names being the training split's.
  Another split's folders are mapped to those names: a class the training split lacks is a
  DataError (its images could only be scored wrong); a class missing from the split simply
  has no images. Hidden folders and `__MACOSX` are ignored (and counted in a log line).
  Unreadable files are left out and counted; a tree with no class folders is read as one
  unlabelled class.
  """
  if image_check not in IMAGE_CHECKS:
    raise DataError(f"image check must be one of {IMAGE_CHECKS}, got {image_check!r}")
  root = _folder_root(path, split)
  here, ignored = class_folders(root)
  class_names = here
  train_root = _folder_root(path, "train")
  if os.path.realpath(train_root) != os.path.realpath(root):
    class_names = class_folders(train_root)[0]
    if class_names and not here:
      raise ClassMismatchError(
          f"folder:{path}: {root} has no class folders while the training split {train_root} "
          f"has {len(class_names)}: the labels of its images are unknown; put them into "
          "folders named like the training split's")
    unknown = sorted(set(here) - set(class_names))
    if unknown:
      raise ClassMismatchError(
          f"folder:{path}: {root} has class folder(s) the training split {train_root} does "
          f"not have: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; labels "
          "come from the training split's class folders: add them there or remove them here")
  if ignored:
    logging.warning("%s: ignored %d folder(s) that are not classes (hidden, __MACOSX or a "
                    "link back into the tree): %s", root, len(ignored), ", ".join(ignored[:5]))
  files, labels, hidden_files = [], [], 0
  label_of = {name: i for i, name in enumerate(class_names)}
  for class_dir in (here or [""]):
    top = os.path.join(root, class_dir) if class_dir else root
    # Not os.path.join(root, ""): its trailing slash would never equal `root` below.
    for dirpath, dirnames, names in os.walk(top):
      dirnames[:] = [d for d in dirnames if not _ignored_name(d)]
      if not here and dirpath != root:
        continue
      for name in sorted(names):
        if name.lower().endswith(IMAGE_EXTENSIONS):
          if name.startswith("."):  # `._x.jpg`: macOS metadata, not an image
            hidden_files += 1
            continue
          files.append(os.path.join(dirpath, name))
          labels.append(label_of[class_dir] if class_dir else 0)
  if hidden_files:
    logging.warning("%s: ignored %d hidden file(s) named like images (e.g. macOS '._' files)",
                    root, hidden_files)
  if not files:
    raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    ok = list(pool.map(functools.partial(_check_image, mode=image_check), files, chunksize=256))
  bad = [f for f, good in zip(files, ok) if not good]
  if bad:
    logging.warning("skipped %d unreadable image file(s) under %s, e.g. %s",
                    len(bad), root, ", ".join(bad[:3]))
  kept = [(f, l) for f, l, good in zip(files, labels, ok) if good]
  if not kept:
    raise DataError(f"none of the {len(files)} image files under {root} could be decoded "
                    f"by TensorFlow (JPEG, PNG, GIF, BMP), e.g. {bad[0]}")
  return [f for f, _ in kept], [l for _, l in kept], class_names, len(bad)


def _decode_file(path, label):
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3]), label


def folder_source(path, split="train", image_check="full"):
  files, labels, class_names, skipped = list_image_folder(path, split, image_check)
  # The listing is sorted by class, and the input pipeline's shuffle is a window of
  # --shuffle_buffer elements: without this fixed interleaving, a run shorter than one pass
  # (or a probe, or each PSL stage) would only ever see the first classes of the tree.
  order = np.random.default_rng(0).permutation(len(files))
  files = [files[i] for i in order]
  labels = np.asarray(labels, np.int64)[order]
  elements = tf.data.Dataset.from_tensor_slices((files, labels))
  return Source(f"folder:{path}", elements, _decode_file, len(files),
                len(class_names) or None, skipped)


# ---- TFDS --------------------------------------------------------------------------------

def _tfds_root(data_dir):
  """Where TFDS looks for prepared data sets: `data_dir`, $TFDS_DATA_DIR or its default."""
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")


def check_tfds_name(name, data_dir=None):
  """Raises DataError unless `name` ('cifar10', 'voc/2007', 'imagenet2012:5.1.0') names a
  TFDS builder or a data set already prepared in `data_dir` (for example one written by
  `tfds.dataset_builders.store_as_tfds_dataset`). Looks only at the installed catalogue and
  the disk, never the network."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  base = name.split("/")[0].split(":")[0]
  root = _tfds_root(data_dir)
  if os.path.isdir(os.path.join(root, base)):
    return
  if base not in tfds.list_builders(with_community_datasets=False):
    raise DataError(f"unknown data set {name!r}: not 'demo', not 'folder:PATH', and not a "
                    "TFDS name (see tfds.list_builders())")


def _is_network_error(error):
  """True if `error` or one of its causes is a failed connection (a download without network)."""
  while error is not None:
    if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__module__.split(
        ".")[0] in ("urllib3", "requests"):
      return True
    error = error.__cause__ or error.__context__
  return False


def _reachable(urls, timeout=10.0):
  """True if a TCP connection to the host of one of `urls` opens within `timeout` seconds, or
  if a proxy is configured (the download would go through it: nothing to tell here)."""
  if urllib.request.getproxies():
    return True
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"https": 443, "http": 80, "ftp": 21}.get(parts.scheme, 443)
    try:
      with socket.create_connection((parts.hostname, port), timeout=timeout):
        return True
    except (OSError, ValueError):
      continue
  return False


def _download_urls(name, data_dir):
  """The URLs TFDS would download `name` from ([] for a data set needing a manual download)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  builder = tfds.builder(name, data_dir=data_dir)
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    return []
  return sorted(builder.url_infos or {})


def tfds_load(name, split, data_dir=None, shuffle_files=False):
  """`tfds.load(name, split, with_info=True)` with one-line DataErrors: an unknown name, a
  split that does not exist, or a data set that is not prepared and cannot be downloaded here
  (the message then says where TFDS looked and how to prepare it elsewhere). A data set that
  is not prepared is downloaded only after its server answers: without network that error
  comes at once rather than after minutes of TFDS's download retries."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  check_tfds_name(name, data_dir)
  root = _tfds_root(data_dir)
  not_prepared = (f"cannot load TFDS {name!r}: it is not prepared in {root} and {{}} (no "
                  "network?). Prepare it where there is network (`tfds build "
                  f"{name.split(':')[0]} --data_dir=DIR`), copy DIR here and pass "
                  "--data_dir=DIR, or use --dataset=folder:PATH")
  # A fixed file-shuffle seed: the same run reads the same order (exact resume).
  load = functools.partial(tfds.load, name, split=split, data_dir=data_dir, with_info=True,
                           shuffle_files=shuffle_files,
                           read_config=tfds.ReadConfig(shuffle_seed=0))
  try:
    try:
      return load(download=False)
    except AssertionError as e:  # not prepared in `root`: TFDS would download it
      if "could not find data" not in str(e):
        raise
    urls = _download_urls(name, data_dir)
    if urls and not _reachable(urls):
      raise DataError(not_prepared.format("its download server does not answer"))
    return load(download=True)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many kinds)
    message = f"cannot load TFDS {name!r} split {split!r}: {str(e).strip().splitlines()[0]}"
    if _is_network_error(e):
      message = not_prepared.format("downloading it failed")
    raise DataError(message) from e


def tfds_source(name, split, data_dir=None):
  dataset, info = tfds_load(name, split, data_dir, shuffle_files=True)
  has_label = "label" in info.features
  num_classes = info.features["label"].num_classes if has_label else None

  def decode(example):
    label = example["label"] if has_label else tf.constant(-1, tf.int64)
    return example["image"], tf.cast(label, tf.int64)

  try:
    num_examples = info.splits[split].num_examples
  except Exception:  # pylint: disable=broad-except  (split arithmetic like 'train[:10%]')
    num_examples = None
  return Source(name, dataset, decode, num_examples, num_classes)


# ---- decode once: small data sets held in memory -------------------------------------------

CACHE_MODES = ("auto", "always", "never")
# `--cache=auto` keeps a data set in memory when its decoded images are estimated below this
# (CIFAR-10 train: 50,000 x 32 x 32 x 3 = 147 MiB; ImageNet would be ~100x the limit).
CACHE_AUTO_MAX_BYTES = 2 * 1024**3


def estimated_decoded_bytes(source, sample=8):
  """uint8 bytes of the whole split decoded, from the mean size of its first images, or None
  when the split's size is unknown."""
  if not source.num_examples:
    return None
  pixels = [int(np.prod(image.shape))
            for image, _ in source.images().take(sample).ignore_errors()]
  if not pixels:
    return None
  return int(np.mean(pixels) * source.num_examples)


def cache_in_memory(source, mode="auto", max_bytes=CACHE_AUTO_MAX_BYTES):
  """`source` decoded once into uint8 arrays in memory (elements = decoded pairs, decode =
  identity), so no epoch and no stage decodes a file again; or `source` itself.

  mode: 'never'; 'always'; or 'auto', which caches when the decoded split is estimated below
  `max_bytes` and the source is not already in memory (demo). Images of unequal sizes cannot
  be stacked into one array; such a source is returned as it is.

  The element order is the source's, so shuffling gives the same sequence as without the
  cache.
  """
  if mode not in CACHE_MODES:
    raise DataError(f"cache must be one of {CACHE_MODES}, got {mode!r}")
  if mode == "never" or getattr(source, "in_memory", False):
    return source
  if mode == "auto":
    size = estimated_decoded_bytes(source)
    if size is None or size > max_bytes:
      return source
  try:
    images, labels = [], []
    for image, label in source.images().ignore_errors().batch(4096).as_numpy_iterator():
      images.append(image)
      labels.append(label)
    images, labels = np.concatenate(images), np.concatenate(labels)
  except (tf.errors.InvalidArgumentError, ValueError):  # images of different sizes
    logging.info("%s: images differ in size, not cached as one array", source.name)
    return source
  logging.info("%s: %d images decoded once and kept in memory (%.0f MiB)", source.name,
               len(labels), images.nbytes / 2**20)
  # Files that passed the up-front check (or were not checked: --image_check=none) but fail
  # to decode are dropped above; count them with the ones the check left out.
  failed = max(0, source.num_examples - len(labels)) if source.num_examples else 0
  if failed:
    logging.warning("%s: %d image file(s) failed to decode and were skipped", source.name,
                    failed)
  return dataclasses.replace(
      source, elements=tf.data.Dataset.from_tensor_slices((images, labels)),
      decode=_identity, num_examples=len(labels), in_memory=True,
      skipped=source.skipped + failed)


def _identity(image, label):
  return image, label


# ---- input pipelines ---------------------------------------------------------------------

def make_input_fn(source, example_fn, global_batch_size, seed=0, training=True,
                  shuffle_buffer=10_000, steps_per_epoch=None, first_epoch=0, num_epochs=None,
                  batch_fn=None):
  """A `tf.distribute` input_fn: shard per worker, shuffle, map, batch per replica.

  Args:
    source: a Source.
    example_fn: `(image, label, seed[2]) -> (inputs, targets)`, from a task.
    global_batch_size: batch over all replicas; each replica gets its share.
    seed: base seed of the shuffle and of every augmentation.
    training: shuffle and repeat forever (the trainer counts steps) if True.
    shuffle_buffer: elements in the shuffle buffer.
    steps_per_epoch: with `training`, make every epoch its own pipeline of exactly this many
      batches, shuffled and augmented from (seed, pipeline, epoch) alone, so a run resumed at
      epoch `first_epoch` sees the very batches an uninterrupted run sees from there on.
    first_epoch: the epoch the returned data set starts at (with `steps_per_epoch`).
    num_epochs: with `steps_per_epoch`, the epoch the data set ends before.
    batch_fn: the task's batched form of `example_fn` (`Task.batch_fn`), used instead of it
      when the source is held in memory (images of one size): the same batches, with the
      image ops run once per batch, which leaves more of the cores to the training step.

  Returns:
    `input_fn(tf.distribute.InputContext | None) -> tf.data.Dataset`.
  """
  def input_fn(context=None):
    ds = source.elements
    pipeline_id = 0
    batch_size = global_batch_size
    if context is not None:
      pipeline_id = context.input_pipeline_id
      batch_size = context.get_per_replica_batch_size(global_batch_size)
      if context.num_input_pipelines > 1:
        ds = ds.shard(context.num_input_pipelines, pipeline_id)
    if training and steps_per_epoch:
      batched = batch_fn if source.in_memory else None
      ds = _epoch_seeded(ds, source.decode, example_fn, steps_per_epoch * batch_size,
                         seed * 1009 + pipeline_id, first_epoch, shuffle_buffer, num_epochs,
                         batch_fn=batched, batch_size=batch_size)
      if batched is None:
        ds = ds.batch(batch_size, drop_remainder=True)
      options = tf.data.Options()
      options.experimental_optimization.map_parallelization = True
      return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
    if training:
      ds = ds.shuffle(shuffle_buffer, seed=seed * 1009 + pipeline_id,
                      reshuffle_each_iteration=True).repeat()
    base_seed = tf.constant(seed * 1009 + pipeline_id, tf.int64)
    if batch_fn is not None and source.in_memory:
      # Decoded images of one size: batch first, augment the batch (same seeds per example).
      ds = ds.enumerate().batch(batch_size, drop_remainder=training).map(
          lambda i, pair: batch_fn(pair[0], pair[1],
                                   tf.stack([tf.fill(tf.shape(i), base_seed), i], axis=1)),
          num_parallel_calls=tf.data.AUTOTUNE)
    else:
      ds = ds.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)
      ds = ds.ignore_errors(log_warning=True)  # a file that passed the check but fails to decode
      # Counter after repeat, so every epoch draws fresh augmentations.
      ds = ds.enumerate().map(
          lambda i, pair: example_fn(pair[0], pair[1], tf.stack([base_seed, i])),
          num_parallel_calls=tf.data.AUTOTUNE)  # deterministic order: reproducible runs
      ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
  return input_fn


def _epoch_seeded(elements, decode, example_fn, per_epoch, stream_seed, first_epoch,
                  shuffle_buffer, num_epochs, batch_fn=None, batch_size=None):
  """Examples of epochs first_epoch .. num_epochs - 1, `per_epoch` each.

  Epoch e is shuffled with seed (stream_seed, e) and its examples are augmented with the
  counters e * per_epoch + i, so its content depends on nothing but (seed, pipeline, e): the
  position of the input pipeline is the epoch number the checkpoint already holds.

  Each epoch is its own pipeline built here with Python-int seeds, and the epochs are
  concatenated: a shuffle seed computed from a tensor epoch (inside `flat_map`) fails to trace
  when the global seed is 0 (TF compares the seed pair with (0, 0) in Python).
  With `batch_fn` (elements decoded in memory), batches of `batch_size` (which divides
  `per_epoch`) are augmented whole, with the same per-example counters.
  """
  if num_epochs is None or num_epochs <= first_epoch:
    raise ValueError(f"an epoch-seeded pipeline needs num_epochs > first_epoch, got "
                     f"{num_epochs} and {first_epoch}")

  def one_epoch(epoch):
    ds = elements.shuffle(shuffle_buffer, seed=(stream_seed * 1_000_003 + epoch) % 2**62,
                          reshuffle_each_iteration=False).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=True)  # a file that passed the check but fails to decode
    ds = ds.take(per_epoch).enumerate(start=epoch * per_epoch)
    seed_tensor = tf.constant(stream_seed, tf.int64)
    if batch_fn is not None:
      return ds.batch(batch_size, drop_remainder=True).map(
          lambda i, pair: batch_fn(pair[0], pair[1],
                                   tf.stack([tf.fill(tf.shape(i), seed_tensor), i], axis=1)),
          num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda i, pair: example_fn(pair[0], pair[1], tf.stack([seed_tensor, i])),
                  num_parallel_calls=tf.data.AUTOTUNE)  # deterministic order

  ds = one_epoch(first_epoch)
  for epoch in range(first_epoch + 1, num_epochs):
    ds = ds.concatenate(one_epoch(epoch))
  return ds
