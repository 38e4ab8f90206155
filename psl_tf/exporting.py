r"""SavedModel export of a backbone for downstream use.

  python -m psl_tf.export --workdir=runs/rot [--stage=2] [--output=DIR]

The default endpoint (`serving_default`) takes a batch of uint8 RGB images of any size (one
size per batch), gives them the evaluation view of the run (shorter side to the run's resize,
then the central image_size x image_size crop: what `psl_tf.evaluate` feeds the backbone), and
returns the per-block feature maps ``b1``..``b5`` and their global-average-pooled vectors
``b1_pool``..``b5_pool``. The
SavedModel needs only TensorFlow to load: no `psl_tf`, no Keras.

The entry point rebuilds the backbone of any finished stage of a run (architecture and image
size from the run's flags.txt) and writes the SavedModel and, next to its files, the Keras
model `backbone.keras` for fine-tuning in Keras. It is made of Keras' built-in layers only
(`psl_tf.models.portable_backbone`: a RevNet is rebuilt without its custom layers), so
`keras.saving.load_model` reads it in a process that never imports psl_tf.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import keras
import tensorflow as tf

from psl_tf import guards
from psl_tf import models
from psl_tf import runlock
from psl_tf import workdir as wd
from psl_tf.data import images as image_lib
from psl_tf.models import blocks as blocks_lib

KERAS_FILE = "backbone.keras"


def features_fn(backbone: keras.Model, image_size: int,
                resize: int | None = None) -> Callable[[Any], dict[str, Any]]:
  """`uint8 images [N, H, W, 3] -> {b1..b5, b1_pool..b5_pool}` for a backbone.

  The images get the evaluation view (`psl_tf.data.views.eval_view_fn`): shorter side to
  `resize` (default image_size x 256/224, as in training), then the central crop."""
  resize = resize or int(round(image_size * 256 / 224))

  def serve(images: Any) -> dict[str, Any]:
    x = image_lib.resize_shorter_side_batch(image_lib.to_float(images), resize)
    x = tf.ensure_shape(image_lib.center_crop_batch(x, image_size),
                        [None, image_size, image_size, 3])
    # float32 features whatever the backbone computes in (a --precision=mixed_* run).
    maps = {k: tf.cast(v, tf.float32) for k, v in backbone(x, training=False).items()}
    outputs = {name: maps[name] for name in blocks_lib.BLOCK_NAMES}
    outputs.update({f"{name}_pool": tf.reduce_mean(maps[name], axis=[1, 2])
                    for name in blocks_lib.BLOCK_NAMES})
    return outputs
  return serve


def export_backbone(backbone: keras.Model, path: str, image_size: int,
                    resize: int | None = None) -> str:
  """Writes the backbone as a SavedModel at `path` (see the module docstring)."""
  archive = keras.export.ExportArchive()
  archive.track(backbone)
  archive.add_endpoint(
      "serving_default", features_fn(backbone, image_size, resize),
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  archive.write_out(path, verbose=False)
  return path


def export_run(workdir: str, stage: int | None = None, output: str | None = None,
               log: Callable[[str], object] = lambda text: None) -> tuple[str, str, wd.Run]:
  """Exports a finished stage of the run in `workdir`; returns (SavedModel dir, .keras path).

  Args:
    workdir: a pre-training work directory.
    stage: the finished stage to export (default: the last one).
    output: target directory (default: `<workdir>/export` for the last stage,
      `<workdir>/export_stage_<k>` for an earlier one).
    log: where progress lines go (the entry point prints them).

  Raises:
    ValueError: the run or stage cannot be read, `output` is a file or cannot be written, or
      another process uses the run (`psl_tf.runlock.WorkdirInUse`, naming it).
    psl_tf.guards.CannotContinue: the disk filled up (the message names the path).
  """
  run = wd.load_run(workdir, stage)
  if output is not None and os.path.exists(output) and not os.path.isdir(output):
    raise ValueError(f"--output={output} is a file; a SavedModel is a directory: pass a new "
                     "or existing directory")
  if output is None:
    last = wd.finished_stages(workdir)[-1]
    output = os.path.join(workdir, "export" if run.stage == last else f"export_stage_{run.stage}")
  inside = os.path.realpath(output).startswith(os.path.realpath(workdir) + os.sep)
  # Not while another process uses the run; a read-only run exported elsewhere needs no lock.
  with runlock.hold(workdir, "psl_tf.export", required=inside):
    wd.check_writable_dir(output, "the export")  # before the work, not after it
    try:
      return _export_run(run, workdir, output, log)
    except (OSError, tf.errors.OpError) as e:
      if guards.is_disk_full(e):
        raise guards.CannotContinue(guards.disk_full_message(e, output, "the export")) from e
      raise


def _export_run(run: wd.Run, workdir: str, output: str,
                log: Callable[[str], object]) -> tuple[str, str, wd.Run]:
  """`export_run` with the run held and `output` checked."""
  log(f"   building {run.config.backbone} and loading stage {run.stage} of {workdir}")
  backbone = run.build_backbone()
  log(f"   tracing and writing the SavedModel to {output}")
  export_backbone(backbone, output, run.config.image_size, run.config.resize_to)
  keras_path = os.path.join(output, KERAS_FILE)
  log(f"   writing the Keras model {keras_path}")
  models.portable_backbone(backbone).save(keras_path)
  return output, keras_path, run


def export(run: str | os.PathLike[str] | wd.Run, stage: int | None = None,
           output: str | None = None, log: Callable[[str], object] | None = None) -> str:
  """Exports a finished stage of a run (a work directory or a `psl_tf.workdir.Run`) and
  returns the SavedModel's directory (`backbone.keras` is inside it); `psl_tf.export(...)`.
  """
  if isinstance(run, wd.Run):
    stage = run.stage if stage is None else stage
    run = run.workdir
  path, _, _ = export_run(os.fspath(run), stage, output, log=log or (lambda text: None))
  return path

