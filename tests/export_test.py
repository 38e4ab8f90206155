"""`python -m psl_tf.export`: SavedModel and .keras backbone of any finished stage."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from psl_tf import export
from psl_tf import workdir as wd
from psl_tf.models import build_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = {"backbone": "cifar_resnet", "depth": "10", "width": "8", "image_size": "24",
         "dataset": "demo", "task": "rotation", "mode": "psl", "epochs": "1"}


def _fake_run(path):
  """A work directory with two finished stages of different weights, without training."""
  wd.write_flags(str(path), {**FLAGS, "workdir": str(path)})
  backbones = []
  for stage in (1, 2):
    keras.utils.set_random_seed(stage)
    backbone = build_backbone("cifar_resnet", depth=10, width=8)
    wd.save_backbone_weights(backbone, wd.stage_weights_path(str(path), stage))
    backbones.append(backbone)
  return backbones


LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    images = np.load(sys.argv[2])
    out = model.signatures["serving_default"](images=tf.constant(images))
    assert "psl_tf" not in sys.modules, "the SavedModel pulled in psl_tf"
    assert not any(m.startswith("psl_tf") for m in sys.modules)
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
""")


def test_export_loads_without_psl_tf_and_matches_keras(tmp_path):
  run = tmp_path / "run"
  backbones = _fake_run(run)
  path, keras_path, info = export.export_run(str(run), stage=1)
  assert info.stage == 1 and path == os.path.join(str(run), "export_stage_1")
  # Images of a size other than the training size: the endpoint resizes.
  images = np.random.default_rng(0).integers(0, 256, (3, 30, 41, 3), dtype=np.uint8)
  np.save(tmp_path / "images.npy", images)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-c", LOADER, path, str(tmp_path / "images.npy"),
                  str(tmp_path / "out.npz")], check=True, cwd=str(tmp_path), env=env,
                 timeout=300)
  served = np.load(tmp_path / "out.npz")
  expected = export.features_fn(backbones[0], 24)(images)
  assert sorted(served.files) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(served[name], np.asarray(value), rtol=1e-4, atol=1e-5)
  assert served["b5"].shape == (3, 3, 3, 64) and served["b5_pool"].shape == (3, 64)
  # Stage 2 has other weights, so exporting stage 1 really used stage 1.
  other = export.features_fn(backbones[1], 24)(images)
  assert not np.allclose(served["b5_pool"], np.asarray(other["b5_pool"]))

  # The .keras file loads with plain Keras and gives the same maps.
  loaded = keras.models.load_model(keras_path)
  x = np.random.default_rng(1).uniform(size=(2, 24, 24, 3)).astype(np.float32)
  mine, theirs = backbones[0](x, training=False), loaded(x, training=False)
  for name in mine:
    np.testing.assert_allclose(np.asarray(theirs[name]), np.asarray(mine[name]), atol=1e-5)


def test_cli_exports_last_stage_by_default(tmp_path):
  run = tmp_path / "run"
  _fake_run(run)
  result = subprocess.run([sys.executable, "-m", "psl_tf.export", f"--workdir={run}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "exported stage 2" in result.stdout
  assert "tracing and writing the SavedModel" in result.stdout  # progress before the result
  assert os.path.exists(run / "export" / "saved_model.pb")
  assert os.path.exists(run / "export" / export.KERAS_FILE)
  # The entry point prints a ValueError as one line (exit 2); this is the one it would get.
  with pytest.raises(ValueError, match="no finished stage 7; finished: 1, 2"):
    export.export_run(str(run), stage=7)


def test_load_run_without_flags_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="not a psl_tf work directory"):
    export.export_run(str(tmp_path))


def test_backbone_initialisation_follows_the_seed():
  # Stages exported from different runs must differ; this failed when one shared initializer
  # (seeded once at import) gave every build, and every same-shaped conv, the same kernels.
  def kernels(seed):
    keras.utils.set_random_seed(seed)
    return [np.asarray(v) for v in build_backbone("cifar_resnet", depth=10, width=8).weights
            if v.path.endswith("kernel")]
  a, b, c = kernels(1), kernels(2), kernels(1)
  assert all(np.array_equal(x, y) for x, y in zip(a, c))
  assert not any(np.array_equal(x, y) for x, y in zip(a, b))
  assert a[1].shape == a[2].shape and not np.array_equal(a[1], a[2])
