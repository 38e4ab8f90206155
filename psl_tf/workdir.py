"""The work directory of a run: resolved flags, per-stage weights, summary and checkpoints.

Layout (DESIGN.md 4)::

  flags.txt                   resolved flags, usable as --flagfile
  summary.json                per stage: steps, loss, pretext accuracy, time, images/s
  stage_<k>/stage_summary.json    the finished stage's entry of summary.json
  stage_<k>/backbone.weights.h5   written when stage k finishes (Keras weights format)
  stage_<k>/DONE                  written last: stage k is finished (summary and weights)
  stage_<k>/ckpt/             epoch checkpoints of the running stage (removed when it ends)
  logs/stage_<k>/             TensorBoard
  export/                     SavedModel of the final backbone
  run.lock                    the process using the run (psl_tf.runlock; kept, unlocked)

`load_run` reads a finished run back (its typed Config, a stage, its backbone) for
evaluation and export.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import tempfile
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import runlock
from psl_tf.models import blocks as blocks_lib
from psl_tf.models import build_backbone

FLAGS_FILE = "flags.txt"
SUMMARY_FILE = "summary.json"
WEIGHTS_FILE = "backbone.weights.h5"
STAGE_SUMMARY_FILE = "stage_summary.json"
DONE_FILE = "DONE"
# Set to "<point>" or "<point>:<n>" to SIGKILL this process the n-th time (default 1st) it
# reaches `crash_point(<point>)`: how the kill drill (scripts/kill_drill.py) hits the exact
# moments a timer cannot (half-way through a weights write, between two stages).
CRASH_ENV = "PSL_TF_CRASH_AT"
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
  """SIGKILLs this process here if $PSL_TF_CRASH_AT names this point (see CRASH_ENV)."""
  wanted = os.environ.get(CRASH_ENV)
  if not wanted:
    return
  point, _, nth = wanted.partition(":")
  if point != name:
    return
  _crash_counts[name] = _crash_counts.get(name, 0) + 1
  if _crash_counts[name] == int(nth or 1):
    os.kill(os.getpid(), signal.SIGKILL)


class NonFiniteWeightsError(ValueError):
  """Backbone weights hold NaN or infinity: the run that wrote them diverged."""


def stage_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, f"stage_{index}")


def stage_weights_path(workdir: str, index: int) -> str:
  return os.path.join(stage_dir(workdir, index), WEIGHTS_FILE)


def stage_done(workdir: str, index: int) -> bool:
  """True when stage `index` finished: its DONE marker is there (written after its summary
  and weights). Weights without a stage_summary.json come from before the marker (or from
  `save_backbone_weights` alone) and count as finished too; weights with a stage_summary.json
  but no marker are a stage killed while finishing, which is not."""
  if not tf.io.gfile.exists(stage_weights_path(workdir, index)):
    return False  # DONE without weights: they were deleted (see stages_missing_weights)
  if tf.io.gfile.exists(os.path.join(stage_dir(workdir, index), DONE_FILE)):
    return True
  return not tf.io.gfile.exists(os.path.join(stage_dir(workdir, index), STAGE_SUMMARY_FILE))


def read_stage_summary(workdir: str, index: int) -> dict[str, Any] | None:
  """The summary entry a finished stage wrote next to its weights, or None."""
  path = os.path.join(stage_dir(workdir, index), STAGE_SUMMARY_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def finish_stage(workdir: str, index: int, backbone: keras.Model,
                 stage_summary: dict[str, Any]) -> None:
  """Marks stage `index` finished in one step that a kill cannot leave half-done: its summary
  entry, then its weights (each written to a temporary name and renamed), then DONE."""
  directory = stage_dir(workdir, index)
  tf.io.gfile.makedirs(directory)
  _write_json(os.path.join(directory, STAGE_SUMMARY_FILE), stage_summary)
  save_backbone_weights(backbone, stage_weights_path(workdir, index))
  crash_point("stage_weights_written")
  with tf.io.gfile.GFile(os.path.join(directory, DONE_FILE), "w") as f:
    f.write("finished\n")


PARTIAL_SUFFIX = ".partial"
LOCK_FILE = runlock.LOCK_FILE  # which process uses the run (kept between runs)
# The only names a killed psl_tf run leaves half-written (see save_backbone_weights,
# _write_json, write_flags and the export in psl_tf.pretrain); nothing else is ever removed.
_TEMPORARY = (("stage_*", "tmp*.weights.h5"), ("stage_*", "*.json.tmp"), ("", "*.json.tmp"),
              ("", FLAGS_FILE + ".tmp"))


def is_run(workdir: str) -> bool:
  """True if `workdir` holds a psl_tf run (its flags.txt)."""
  return tf.io.gfile.exists(os.path.join(workdir, FLAGS_FILE))


def check_new_or_run(workdir: str) -> None:
  """Raises ValueError unless `workdir` is missing, empty, or a psl_tf run: a training run
  writes into it and cleans up its own leftovers there, which must never touch files of
  something else (a user's folder passed as --workdir by mistake)."""
  if not tf.io.gfile.exists(workdir):
    return
  if not tf.io.gfile.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file; pass a new or empty directory, or the "
                     "work directory of a psl_tf run")
  if is_run(workdir):
    return
  # A run killed before its first flags.txt was in place leaves only psl_tf's own files.
  own = {LOCK_FILE, FLAGS_FILE + ".tmp"}
  others = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(workdir) if n not in own)
  if others:
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    raise ValueError(f"--workdir={workdir} is not empty ({shown}) and is not a psl_tf run (no "
                     f"{FLAGS_FILE}); pass a new or empty directory")


def check_writable_dir(path: str, what: str) -> None:
  """Creates `path` if needed and raises ValueError (one line) unless a file can be written
  in it: checked before a long job whose results go there, not after it."""
  try:
    tf.io.gfile.makedirs(path)
    probe = os.path.join(path, f".psl_tf_write_test_{os.getpid()}")
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("")
    tf.io.gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
    raise ValueError(f"cannot write {what} into {path} ({reason}); make it writable or "
                     "pick another place (nothing was computed)") from None


def remove_temporary_files(workdir: str) -> list[str]:
  """Deletes what a killed psl_tf run may have left half-written in its work directory:
  `stage_<k>/tmp*.weights.h5`, `*.json.tmp`, `flags.txt.tmp` and `export.partial/`. Does
  nothing in a folder that is not a psl_tf run (no flags.txt). Returns the paths removed."""
  if not is_run(workdir):
    return []
  removed = []
  for folder, pattern in _TEMPORARY:
    for path in glob.glob(os.path.join(glob.escape(workdir), folder, pattern)):
      parent = os.path.basename(os.path.dirname(path))
      if folder and not parent[len("stage_"):].isdigit():
        continue  # only psl_tf's own stage_<k> folders
      if os.path.isfile(path):
        os.remove(path)
        removed.append(path)
  partial = os.path.join(workdir, "export" + PARTIAL_SUFFIX)
  if os.path.isdir(partial):
    shutil.rmtree(partial, ignore_errors=True)
    removed.append(partial)
  return removed


def stages_missing_weights(workdir: str) -> list[int]:
  """Indices k whose stage_<k>/DONE says finished but whose weights file is gone, ascending."""
  if not tf.io.gfile.isdir(workdir):
    return []
  found = []
  for name in tf.io.gfile.listdir(workdir):
    name = name.rstrip("/")
    if name.startswith("stage_") and name[6:].isdigit():
      k = int(name[6:])
      if (tf.io.gfile.exists(os.path.join(stage_dir(workdir, k), DONE_FILE))
          and not tf.io.gfile.exists(stage_weights_path(workdir, k))):
        found.append(k)
  return sorted(found)


def finished_stages(workdir: str) -> list[int]:
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

def save_backbone_weights(backbone: keras.Model, path: str) -> None:
  """Writes the backbone's weights in Keras 3's own format (`backbone.save_weights`), so
  `backbone.load_weights(path)` reads them into a backbone built the same way.

  The file is written to a temporary name and renamed, so a killed run never leaves a
  half-written file that would look like a finished stage.
  """
  tf.io.gfile.makedirs(os.path.dirname(path))
  fd, tmp = tempfile.mkstemp(suffix=".weights.h5", dir=os.path.dirname(path))
  os.close(fd)
  backbone.save_weights(tmp, overwrite=True)
  crash_point("weights_tmp_written")
  os.replace(tmp, path)


def is_block_layout(path: str) -> bool:
  """True for a weights file in the layout of runs written before the Keras format: HDF5
  groups `b1`..`b5`, datasets `<layer>/<variable>` (`load_backbone_weights` reads both)."""
  with h5py.File(path, "r") as f:
    return "b1" in f and "layers" not in f


def load_backbone_weights(backbone: keras.Model, path: str) -> None:
  """Loads stage weights into `backbone`; refuses non-finite weights (a diverged run).

  Reads the Keras format (`backbone.load_weights`) and the older per-block layout."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"no backbone weights at {path}")
  if is_block_layout(path):
    _load_block_layout(backbone, path)
    return
  backbone.load_weights(path)
  for block in blocks_lib.get_blocks(backbone):
    for variable in block.weights:
      if not np.all(np.isfinite(variable.numpy())):
        raise NonFiniteWeightsError(
            f"{path} holds non-finite weights ({block.name}/{variable.path}): the run that "
            "wrote them diverged; retrain with a lower --learning_rate")


def _load_block_layout(backbone: keras.Model, path: str) -> None:
  """Reads the per-block layout (`<block>/<variable path>`); every variable must match."""
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
        if not np.all(np.isfinite(value)):
          raise NonFiniteWeightsError(
              f"{path} holds non-finite weights ({block.name}/{variable.path}): the run that "
              "wrote them diverged; retrain with a lower --learning_rate")
        variable.assign(value)


def check_finite_weights(path: str) -> None:
  """Raises NonFiniteWeightsError if any weight in the HDF5 file at `path` is NaN or inf."""
  bad: list[str] = []
  with h5py.File(path, "r") as f:
    def visit(name: str, item: Any) -> None:
      if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" and not bad:
        if not np.all(np.isfinite(item[()])):
          bad.append(name)
    f.visititems(visit)
  if bad:
    raise NonFiniteWeightsError(
        f"{path} holds non-finite weights ({bad[0]}): the run that wrote them diverged; it "
        "cannot be evaluated or exported; retrain with a lower --learning_rate")


# ---- flags and summary -------------------------------------------------------------------

def read_flags(workdir: str) -> dict[str, str] | None:
  """{name: text} of the run's flags.txt, or None when there is none; ValueError naming the
  file when it is not a complete flags.txt (see `check_complete_flags`)."""
  path = os.path.join(workdir, FLAGS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  check_complete_flags(path)
  return read_flags_file(path)


def _flag_texts(lines: list[str]) -> dict[str, str]:
  """{name: text} of `--name=value` lines (a bare `--name` is true)."""
  pairs = (l[2:].partition("=") for l in lines)
  return {name: value if sep else "true" for name, sep, value in pairs}


def read_flags_file(path: str) -> dict[str, str] | None:
  """{name: text} of a flagfile (`--name=value` lines; a bare `--name` is true)."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    lines = [l.strip() for l in f if l.strip().startswith("--")]
  return _flag_texts(lines)


_FLAG_LINE = re.compile(r"--[A-Za-z_][A-Za-z0-9_]*(=.*)?")
# Written by every version of psl_tf: a flags.txt without them was cut short (its lines are
# sorted, so `workdir`, the last, goes first).
_REQUIRED_FLAGS = ("task", "workdir")


def check_complete_flags(path: str) -> None:
  """Raises ValueError naming `path` unless it reads as a whole flags.txt: it ends with a
  newline, every line is a `--name=value` flag, a comment or blank, and it names the task
  and the work directory. A file cut short (a write killed half-way, a full disk) would
  otherwise be read as defaults: `evaluate` would then evaluate the `demo` set."""
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read()
  problem = None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    text, problem = "", "it is not text"
  if problem is None and not text:
    problem = "it is empty"
  elif problem is None and not text.endswith("\n"):
    problem = "it ends in the middle of a line"
  if problem is None:
    for number, line in enumerate(text.splitlines(), start=1):
      line = line.strip()
      if line and not line.startswith(("#", "//")) and not _FLAG_LINE.fullmatch(line):
        problem = f"line {number} is not a flag ({line[:40]!r})"
        break
  if problem is None:
    names = set(read_flags_file(path) or {})
    missing = [f"--{n}" for n in _REQUIRED_FLAGS if n not in names]
    if missing:
      problem = f"it has no {' or '.join(missing)}"
  if problem:
    raise ValueError(f"{path} is not a complete flags.txt ({problem}): it was cut short or "
                     "damaged; restore it from a copy, or run psl_tf.train with the run's own "
                     "flags and --repair_flags (it checks them against what is left and "
                     "rewrites the file) before using this run")


def surviving_flags(path: str) -> dict[str, str]:
  """{name: text} of the whole flag lines left in a damaged flags.txt: lines that end with a
  newline and read as `--name=value` (a line cut short, bytes that are not text and other
  lines are dropped)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    text = f.read().decode("utf-8", errors="replace")
  whole = text.split("\n")[:-1]  # the text after the last newline was cut short
  lines = [l.strip() for l in whole if _FLAG_LINE.fullmatch(l.strip())]
  return _flag_texts(lines)


def write_flags(workdir: str, flag_values: dict[str, Any]) -> None:
  """Writes `{name: value}` as a flagfile (one `--name=value` per line, sorted), through a
  temporary file in the same folder and a rename: a kill or a full disk leaves the old
  flags.txt or the new one, never a part of one."""
  tf.io.gfile.makedirs(workdir)
  path = os.path.join(workdir, FLAGS_FILE)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write("# Resolved flags of this run; reuse with --flagfile.\n")
    for name in sorted(flag_values):
      f.write(f"--{name}={flag_values[name]}\n")
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_summary(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, SUMMARY_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
  tf.io.gfile.makedirs(workdir)
  _write_json(os.path.join(workdir, SUMMARY_FILE), summary)


def _write_json(path: str, value: Any) -> None:
  """Writes JSON to `path` through a temporary file and a rename (never half-written)."""
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=_json_default)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON-serialisable: {type(value)}")


def remove_tree(path: str) -> None:
  if tf.io.gfile.exists(path):
    shutil.rmtree(path, ignore_errors=True)


# ---- a finished run, read back -----------------------------------------------------------

@dataclasses.dataclass
class Run:
  """What evaluation and export need to know about one run.

  Attributes:
    workdir: the run's work directory.
    config: its `psl_tf.config.Config`, rebuilt from `flags.txt`.
    stage: the finished stage whose weights are used.
    summary: the run's `summary.json` (empty dict if missing).
  """
  workdir: str
  config: config_lib.Config
  stage: int
  summary: dict[str, Any]

  @property
  def name(self) -> str:
    """A short row label: the work directory's base name and the mode."""
    base = os.path.basename(os.path.normpath(self.workdir))
    return f"{base} ({self.config.mode})" if self.config.mode not in base else base

  @property
  def weights_path(self) -> str:
    return stage_weights_path(self.workdir, self.stage)

  def build_backbone(self) -> keras.Model:
    """A fresh backbone with this run's architecture and the stage's weights."""
    backbone = build_backbone(self.config.backbone, **self.config.backbone_kwargs())
    load_backbone_weights(backbone, self.weights_path)
    return backbone


def config_from_workdir(workdir: str) -> config_lib.Config:
  """The Config of the run in `workdir`; ValueError if it has no flags.txt."""
  values = read_flags(workdir)
  if values is None:
    raise ValueError(f"{workdir} is not a psl_tf work directory (no {FLAGS_FILE}); pass the "
                     "--workdir of a pre-training run")
  try:
    return config_lib.from_flags(values)
  except ValueError as e:
    raise ValueError(f"cannot read {os.path.join(workdir, FLAGS_FILE)}: {e}") from None


def load_run(workdir: str | os.PathLike[str], stage: int | None = None) -> Run:
  """Opens a run at `stage` (default: its last finished stage); ValueError if unusable."""
  workdir = os.fspath(workdir)
  config = config_from_workdir(workdir)
  done = finished_stages(workdir)
  missing = [k for k in stages_missing_weights(workdir)
             if k == stage or (stage is None and (not done or k > done[-1]))]
  if missing:
    raise ValueError(f"stage {missing[0]} of {workdir} is marked finished but its weights "
                     f"{stage_weights_path(workdir, missing[0])} are missing; restore them or "
                     "pick another --stage")
  if not done:
    raise ValueError(f"{workdir} has no finished stage yet (no stage_<k>/{WEIGHTS_FILE}); "
                     "let pre-training finish a stage first")
  if stage is None:
    stage = done[-1]
  elif stage not in done:
    raise ValueError(f"{workdir} has no finished stage {stage}; finished: "
                     f"{', '.join(map(str, done))}")
  check_finite_weights(stage_weights_path(workdir, stage))  # a diverged run scores nothing
  return Run(workdir, config, stage, read_summary(workdir))
