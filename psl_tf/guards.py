"""Guards that keep a wrong run from looking right: divergence, a silent input pipeline, and
command lines that absl would accept but that do not mean what they say.

* `NonFiniteGuard` stops `fit` at the first step whose loss or gradient norm is NaN or
  infinite, naming the stage, epoch and step; the epoch checkpoint on disk is the last good
  one, and nothing after it (stage weights, summary, export) is written.
* `FirstBatchWatchdog` ends the process with one line if a stage's first batch does not come
  within a bounded time (an input pipeline that drops everything would otherwise wait forever).
* `check_flagfiles` refuses flagfile lines with a trailing comment (absl keeps it as part of
  the value), naming the file and line.
* `onednn_unsafe_convolutions` names the convolutions whose weight gradient TensorFlow's oneDNN
  kernels compute on corrupted memory, so a run that would die natively (or worse, not die)
  is refused in one line before it trains.
"""

import math
import os
import re
import sys
import threading

import keras
import numpy as np

from psl_tf import keras_private


class TrainingDiverged(RuntimeError):
  """The loss, a gradient or a weight became NaN or infinite."""


class NonFiniteGuard(keras.callbacks.Callback):
  """Raises `TrainingDiverged` at the first batch whose loss or gradient norm is not finite.

  The logged values are running means over the epoch, so they turn non-finite at the first
  bad step and stay so: the first batch seen non-finite is the step that diverged.
  """

  def __init__(self, stage_index, steps_per_epoch=None):
    super().__init__()
    self.stage_index = stage_index
    self.steps_per_epoch = steps_per_epoch
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    # Before the epoch checkpoint (this callback comes first): a weight can overflow while the
    # loss stays finite (a BatchNorm moving variance), and must not reach the checkpoint.
    for variable in self.model.weights:
      value = keras.ops.convert_to_numpy(variable)
      if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise TrainingDiverged(
            f"training diverged in stage {self.stage_index}, epoch {epoch + 1}: {variable.path} "
            "is not finite; the checkpoint of the epoch before is kept and nothing was "
            "exported; lower --learning_rate and use a new --workdir")

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    values = {}
    for key in ("loss", "grad_norm"):
      if key in logs:
        values[key] = float(keras.ops.convert_to_numpy(logs[key]))
    if all(math.isfinite(v) for v in values.values()):
      return
    of = f"/{self.steps_per_epoch}" if self.steps_per_epoch else ""
    found = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items())
    raise TrainingDiverged(
        f"training diverged in stage {self.stage_index}, epoch {self.epoch + 1}, step "
        f"{batch + 1}{of}: {found}; nothing of this stage was saved after its last epoch "
        "checkpoint and nothing was exported; lower --learning_rate and use a new --workdir")


class FirstBatchWatchdog(keras.callbacks.Callback):
  """Ends the process (exit code 3) with one line if the first batch of a `fit` takes longer
  than `seconds`: a pipeline that yields nothing blocks inside TensorFlow, where no Python
  exception can reach it."""

  def __init__(self, seconds, program="psl_tf.train", exit_fn=None):
    super().__init__()
    self.seconds = seconds
    self.program = program
    self.exit_fn = exit_fn or (lambda: os._exit(3))  # pylint: disable=protected-access
    self._timer = None

  def _expired(self):
    print(f"{self.program}: error: no training batch after {self.seconds:g} s: the input "
          "pipeline produced nothing (are the images decodable? is --data_dir right?); "
          "raise --first_batch_timeout if the first batch is just slow", file=sys.stderr,
          flush=True)
    self.exit_fn()

  def on_train_begin(self, logs=None):
    if self.seconds and self.seconds > 0:
      self._timer = threading.Timer(self.seconds, self._expired)
      self._timer.daemon = True
      self._timer.start()

  def _cancel(self):
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None

  def on_train_batch_end(self, batch, logs=None):
    self._cancel()

  def on_train_end(self, logs=None):
    self._cancel()


# ---- command lines -----------------------------------------------------------------------

_TRAILING_COMMENT = re.compile(r"\s(#|//)")


def flagfile_paths(argv):
  """The --flagfile arguments of `argv`, in order."""
  paths, args = [], list(argv)
  for i, arg in enumerate(args):
    if arg.startswith("--flagfile="):
      paths.append(arg.split("=", 1)[1])
    elif arg == "--flagfile" and i + 1 < len(args):
      paths.append(args[i + 1])
  return paths


def check_flagfiles(argv):
  """Raises ValueError naming file and line for a flagfile line with a trailing comment.

  absl reads `--workdir=runs/a  # first run` as the value `runs/a  # first run`: numeric
  flags then fail to parse, string flags silently take the comment. Nested --flagfile lines
  are followed. Missing files are left to absl to report.
  """
  seen = set()

  def scan(path):
    if path in seen or not os.path.isfile(path):
      return
    seen.add(path)
    with open(path, encoding="utf-8", errors="replace") as f:
      for number, line in enumerate(f, start=1):
        text = line.strip()
        if not text.startswith("-"):
          continue  # blank lines and whole-line comments (# or //)
        if _TRAILING_COMMENT.search(text):
          raise ValueError(f"{path}:{number}: trailing comment on a flag line ({text!r}); absl "
                           "would keep it as part of the value: put the comment on a line of "
                           "its own")
        if text.startswith("--flagfile="):
          scan(text.split("=", 1)[1])

  for path in flagfile_paths(argv):
    scan(path)


# ---- failures a run cannot continue past -------------------------------------------------

class CannotContinue(RuntimeError):
  """The run cannot go on (a full disk, an unreadable checkpoint, missing stage weights);
  the message says what is wrong and what to do, and what the run had is kept."""


_DISK_FULL_TEXT = ("No space left on device", "errno = 28", "Disk quota exceeded")


def is_disk_full(error):
  """True if `error` (an OSError, a TensorFlow OpError, or an error caused by one) is a
  full disk or quota (ENOSPC / EDQUOT)."""
  import errno  # pylint: disable=g-import-not-at-top
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in _DISK_FULL_TEXT):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_message(error, workdir, what="the run"):
  """One line for a full disk: which path (from the error when it names one), what was kept."""
  path = getattr(error, "filename", None)
  detail = str(getattr(error, "message", None) or error).strip().splitlines()
  detail = detail[0] if detail else ""
  where = f"writing {path}" if path else f"under {workdir} ({detail[:200]})"
  return (f"the disk is full {where}: {what} stopped; what was written before (finished "
          "stages, the last epoch checkpoint) is kept; free some space and run the same "
          "command again to continue")


# ---- inputs that teach nothing -----------------------------------------------------------

# A held-out accuracy on fewer images than this moves by 2 % or more per image.
MIN_HELDOUT_IMAGES = 50


def small_training_set_warning(num_examples, batch_size, dataset):
  """A warning line when a training split has fewer images than one batch, or None."""
  if num_examples and num_examples < batch_size:
    return (f"{dataset} has {num_examples} training images, fewer than one batch of "
            f"{batch_size}: every batch repeats the same images, which teaches little; use "
            "more images or a smaller --batch_size")
  return None


def one_class_warning(labels, what):
  """A warning line when the labels `what` trains on hold one class only, or None."""
  labels = np.asarray(labels)
  if labels.ndim == 1 and labels.size and np.unique(labels).size == 1:
    return (f"{what} has images of one class only (label {int(labels[0])}): a classifier "
            "trained on it learns nothing about the others; check the data set's labels")
  return None


def small_heldout_warning(stage_index, images):
  """A warning line when a stage's held-out accuracy comes from fewer than 50 images."""
  if images is not None and images < MIN_HELDOUT_IMAGES:
    return (f"stage {stage_index}: held-out pretext accuracy measured on {images} images only "
            f"(fewer than {MIN_HELDOUT_IMAGES}): one image moves it by "
            f"{100 / max(images, 1):.0f} %; use a larger held-out split or --heldout_examples")
  return None


# TensorFlow 2.21's oneDNN weight gradient (Conv2DBackpropFilter) of a 1x1 convolution with
# stride 2 and fewer than 16 input channels corrupts the heap: the process aborts or segfaults
# (batch 1, 3, 5, 7 at 32 px; batch 4 too at 64 px); 16 or more input channels, stride 1 or 3,
# and 2x2, 3x3 or 7x7 kernels gave the reference gradients. `python scripts/onednn_repro.py`
# reproduces it with the op alone; docs/RELIABILITY.md has the table. In psl_tf's backbones the
# only such layer is cifar_resnet's projection shortcut into B3 when --width is below 16.
ONEDNN_MIN_INPUT_CHANNELS = 16


def onednn_unsafe_convolutions(model):
  """`(layer name, input channels)` of every 1x1 stride-2 `Conv2D` in `model` (nested layers
  included) with fewer than `ONEDNN_MIN_INPUT_CHANNELS` input channels: the shapes whose
  oneDNN weight gradient corrupts memory. `model` must be built."""
  found = []
  for layer in keras_private.flatten_layers(model):
    if (isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)
        and 2 in tuple(layer.strides)):
      channels = int(layer.kernel.shape[-2])
      if channels < ONEDNN_MIN_INPUT_CHANNELS:
        found.append((layer.name, channels))
  return found


def onednn_unsafe_message(model, onednn_on, fix="use --width=16 or more"):
  """One line refusing to train `model` with oneDNN on (`onednn_on`), or None if it is safe;
  `fix`: the way out besides TF_ENABLE_ONEDNN_OPTS=0 (None: that one only)."""
  found = onednn_unsafe_convolutions(model) if onednn_on else []
  if not found:
    return None
  name, channels = found[0]
  return (f"TensorFlow's oneDNN kernels are on (TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}) and their weight gradient of a "
          f"1x1 stride-2 convolution with fewer than {ONEDNN_MIN_INPUT_CHANNELS} input channels "
          f"corrupts memory ({name} has {channels}; scripts/onednn_repro.py): "
          + (f"{fix}, or run " if fix else "run ") + "with TF_ENABLE_ONEDNN_OPTS=0")
