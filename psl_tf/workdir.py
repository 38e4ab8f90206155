"""The work directory of a run: resolved flags, per-stage weights, summary and checkpoints.

Layout (DESIGN.md 4)::

  flags.txt                   resolved flags, usable as --flagfile
  summary.json                per stage: steps, loss, pretext accuracy, time, images/s
  stage_<k>/backbone.weights.h5   written when stage k finishes (HDF5, b1..b5 groups)
  stage_<k>/ckpt/             epoch checkpoints of the running stage (removed when it ends)
  logs/stage_<k>/             TensorBoard
  export/                     SavedModel of the final backbone
"""

import json
import os
import shutil
import tempfile

import h5py
import numpy as np
import tensorflow as tf

from psl_tf.models import blocks as blocks_lib

FLAGS_FILE = "flags.txt"
SUMMARY_FILE = "summary.json"
WEIGHTS_FILE = "backbone.weights.h5"


def stage_dir(workdir, index):
  return os.path.join(workdir, f"stage_{index}")


def stage_weights_path(workdir, index):
  return os.path.join(stage_dir(workdir, index), WEIGHTS_FILE)


def stage_done(workdir, index):
  return tf.io.gfile.exists(stage_weights_path(workdir, index))


def finished_stages(workdir):
  """Indices k with a finished stage_<k>/backbone.weights.h5, ascending."""
  if not tf.io.gfile.isdir(workdir):
    return []
  found = []
  for name in tf.io.gfile.listdir(workdir):
    name = name.rstrip("/")
    if name.startswith("stage_") and name[6:].isdigit() and stage_done(workdir, int(name[6:])):
      found.append(int(name[6:]))
  return sorted(found)


# ---- backbone weights --------------------------------------------------------------------

def save_backbone_weights(backbone, path):
  """Writes every backbone variable as HDF5 dataset `<block>/<layer>/<variable>`.

  The file is written to a temporary name and renamed, so a killed run never leaves a
  half-written file that would look like a finished stage.
  """
  tf.io.gfile.makedirs(os.path.dirname(path))
  fd, tmp = tempfile.mkstemp(suffix=".h5", dir=os.path.dirname(path))
  os.close(fd)
  with h5py.File(tmp, "w") as f:
    for block in blocks_lib.get_blocks(backbone):
      group = f.create_group(block.name)
      for variable in block.weights:
        group.create_dataset(variable.path, data=np.asarray(variable.numpy()))
  os.replace(tmp, path)


def load_backbone_weights(backbone, path):
  """Loads weights written by `save_backbone_weights`; every variable must match."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"no backbone weights at {path}")
  with h5py.File(path, "r") as f:
    for block in blocks_lib.get_blocks(backbone):
      if block.name not in f:
        raise ValueError(f"{path} has no weights for block {block.name}")
      group = f[block.name]
      for variable in block.weights:
        if variable.path not in group:
          raise ValueError(f"{path} has no variable {block.name}/{variable.path}; "
                           "was it written by a different backbone?")
        value = group[variable.path][()]
        if tuple(value.shape) != tuple(variable.shape):
          raise ValueError(f"{block.name}/{variable.path}: shape {value.shape} in {path}, "
                           f"{tuple(variable.shape)} in the model")
        variable.assign(value)


# ---- flags and summary -------------------------------------------------------------------

def read_flags(workdir):
  path = os.path.join(workdir, FLAGS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    lines = [l.strip() for l in f if l.strip().startswith("--")]
  return dict(l[2:].split("=", 1) if "=" in l else (l[2:], "true") for l in lines)


def write_flags(workdir, flag_values):
  """Writes `{name: value}` as a flagfile (one `--name=value` per line, sorted)."""
  tf.io.gfile.makedirs(workdir)
  with tf.io.gfile.GFile(os.path.join(workdir, FLAGS_FILE), "w") as f:
    f.write("# Resolved flags of this run; reuse with --flagfile.\n")
    for name in sorted(flag_values):
      f.write(f"--{name}={flag_values[name]}\n")


def read_summary(workdir):
  path = os.path.join(workdir, SUMMARY_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def write_summary(workdir, summary):
  tf.io.gfile.makedirs(workdir)
  tmp = os.path.join(workdir, SUMMARY_FILE + ".tmp")
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True, default=_json_default)
  tf.io.gfile.rename(tmp, os.path.join(workdir, SUMMARY_FILE), overwrite=True)


def _json_default(value):
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON-serialisable: {type(value)}")


def remove_tree(path):
  if tf.io.gfile.exists(path):
    shutil.rmtree(path, ignore_errors=True)
