"""`python -m psl_tf.export`: SavedModel and .keras backbone of any finished stage."""

import os
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf import exporting as export
from psl_tf.data import views
from psl_tf.evaluation import protocols
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


def _export_stage_1(tmp_path):
  """Exports stage 1 of a fake run; (the stages' backbones, SavedModel path, .keras path,
  images of a size other than the training size)."""
  run = tmp_path / "run"
  backbones = _fake_run(run)
  path, keras_path, info = export.export_run(str(run), stage=1)
  assert info.stage == 1 and path == os.path.join(str(run), "export_stage_1")
  images = np.random.default_rng(0).integers(0, 256, (3, 30, 41, 3), dtype=np.uint8)
  return backbones, path, keras_path, images


def _check_served(served, backbones, images):
  """The SavedModel's outputs are stage 1's evaluation features (the endpoint gives images of
  another size the eval view)."""
  expected = export.features_fn(backbones[0], 24)(images)
  assert sorted(served) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(served[name], np.asarray(value), rtol=1e-4, atol=1e-5)
  assert served["b5"].shape == (3, 3, 3, 64) and served["b5_pool"].shape == (3, 64)
  # Stage 2 has other weights, so exporting stage 1 really used stage 1.
  other = export.features_fn(backbones[1], 24)(images)
  assert not np.allclose(served["b5_pool"], np.asarray(other["b5_pool"]))


def test_export_matches_keras(tmp_path):
  backbones, path, keras_path, images = _export_stage_1(tmp_path)
  out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
  _check_served({k: v.numpy() for k, v in out.items()}, backbones, images)
  # The .keras file loads with plain Keras and gives the same maps.
  loaded = keras.models.load_model(keras_path)
  x = np.random.default_rng(1).uniform(size=(2, 24, 24, 3)).astype(np.float32)
  mine, theirs = backbones[0](x, training=False), loaded(x, training=False)
  for name in mine:
    np.testing.assert_allclose(np.asarray(theirs[name]), np.asarray(mine[name]), atol=1e-5)


@pytest.mark.slow  # a child process loading the SavedModel without psl_tf
def test_export_loads_without_psl_tf(tmp_path):
  backbones, path, _, images = _export_stage_1(tmp_path)
  np.save(tmp_path / "images.npy", images)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run([sys.executable, "-c", LOADER, path, str(tmp_path / "images.npy"),
                  str(tmp_path / "out.npz")], check=True, cwd=str(tmp_path), env=env,
                 timeout=300)
  _check_served(np.load(tmp_path / "out.npz"), backbones, images)


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
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


def test_export_program_in_process_exports_the_last_stage(tmp_path, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import export as cli  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  _fake_run(run)
  flag_values = cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.export", f"--workdir={run}"])
  cli.main(["psl_tf.export"], flag_values)
  assert "exported stage 2" in capsys.readouterr().out
  assert os.path.exists(run / "export" / "saved_model.pb")
  assert os.path.exists(run / "export" / export.KERAS_FILE)
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


def test_exported_features_are_the_evaluation_features_on_a_non_square_image(tmp_path):
  # The SavedModel used to squeeze every image to a square; evaluation resizes the shorter
  # side and centre-crops. On a non-square image the two now give the same features.
  run_dir = tmp_path / "run"
  _fake_run(run_dir)
  path = export.export(str(run_dir), stage=2)
  image = np.random.default_rng(3).integers(0, 256, (37, 61, 3), dtype=np.uint8)
  served = tf.saved_model.load(path).signatures["serving_default"](
      images=tf.constant(image[None]))
  run = wd.load_run(str(run_dir), 2)
  evaluation = protocols.Evaluation(run, protocols.Settings())  # what psl_tf.evaluate uses
  assert (evaluation.image_size, evaluation.resize) == (24, 27)
  view, _ = views.eval_view_fn(evaluation.image_size, evaluation.resize)(image, 0, None)
  maps = run.build_backbone()(view[None], training=False)
  for name in ("b1", "b3", "b5"):
    np.testing.assert_allclose(served[name].numpy(), np.asarray(maps[name]), atol=1e-5)
    np.testing.assert_allclose(served[f"{name}_pool"].numpy(),
                               np.asarray(maps[name]).mean(axis=(1, 2)), atol=1e-5)
  # A squeeze of the whole image to 24 x 24 gives other features: the test can tell.
  squeezed = run.build_backbone()(tf.image.resize(image[None] / 255.0, [24, 24]))
  assert not np.allclose(served["b5_pool"].numpy(),
                         np.asarray(squeezed["b5"]).mean(axis=(1, 2)), atol=1e-3)


def test_stage_weights_load_with_keras_load_weights(tmp_path):
  run_dir = tmp_path / "run"
  backbones = _fake_run(run_dir)
  fresh = build_backbone("cifar_resnet", depth=10, width=8)
  fresh.load_weights(wd.stage_weights_path(str(run_dir), 2))  # plain Keras, no psl_tf reader
  for mine, theirs in zip(backbones[1].weights, fresh.weights):
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def _write_block_layout(backbone, path):
  """The layout stage weights had before the Keras format (b1..b5 groups, variable paths)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    for name in ("b1", "b2", "b3", "b4", "b5"):
      group = f.create_group(name)
      for variable in backbone.get_layer(name).weights:
        group.create_dataset(variable.path, data=np.asarray(variable))


def test_stage_weights_of_old_runs_still_load(tmp_path):
  run_dir = str(tmp_path / "old")
  wd.write_flags(run_dir, {**FLAGS, "workdir": run_dir})
  keras.utils.set_random_seed(5)
  old = build_backbone("cifar_resnet", depth=10, width=8)
  _write_block_layout(old, wd.stage_weights_path(run_dir, 1))
  assert wd.is_block_layout(wd.stage_weights_path(run_dir, 1))
  loaded = wd.load_run(run_dir).build_backbone()
  for mine, theirs in zip(old.weights, loaded.weights):
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


# Loads backbone.keras with plain Keras in a process that never imports psl_tf, runs it, and
# (when given) loads stage weights into it with plain `load_weights`.
PLAIN_KERAS_LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    model = keras.saving.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    outputs = {"export": model(x, training=False)}
    if len(sys.argv) > 4:
      model.load_weights(sys.argv[4])
      outputs["stage"] = model(x, training=False)
    assert not any(m == "psl_tf" or m.startswith("psl_tf.") for m in sys.modules), \\
        "loading the backbone imported psl_tf"
    assert all(type(l).__module__.startswith("keras.") for l in model._flatten_layers())
    np.savez(sys.argv[3], **{f"{k}_{b}": np.asarray(v[b]) for k, v in outputs.items() for b in v})
""")

RUNS = {
    "cifar_resnet": {"backbone": "cifar_resnet", "depth": "10", "width": "8", "image_size": "24"},
    "revnet50": {"backbone": "revnet50", "filters_factor": "1", "recompute": "true",
                 "image_size": "32"},
}


def _fake_run_of(path, backbone_flags):
  """Two finished stages with different weights (and non-trivial BN statistics)."""
  flag_texts = {**FLAGS, **backbone_flags, "workdir": str(path)}
  wd.write_flags(str(path), flag_texts)
  config = wd.config_from_workdir(str(path))
  backbones = []
  for stage in (1, 2):
    keras.utils.set_random_seed(stage)
    backbone = build_backbone(config.backbone, **config.backbone_kwargs())
    rng = np.random.default_rng(stage)
    for variable in backbone.weights:
      if "moving_variance" in variable.path or "gamma" in variable.path:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
      elif "moving_mean" in variable.path:
        variable.assign(rng.uniform(-0.1, 0.1, variable.shape).astype("float32"))
    wd.save_backbone_weights(backbone, wd.stage_weights_path(str(path), stage))
    backbones.append(backbone)
  return config, backbones


@pytest.mark.slow  # a child process per backbone loading it with plain Keras
@pytest.mark.parametrize("name", sorted(RUNS))
def test_backbone_keras_loads_with_plain_keras_in_a_process_without_psl_tf(tmp_path, name):
  config, backbones = _fake_run_of(tmp_path / "run", RUNS[name])
  _, keras_path, _ = export.export_run(str(tmp_path / "run"), stage=2)
  size = config.image_size
  x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype("float32")
  np.save(tmp_path / "x.npy", x)
  args = [keras_path, str(tmp_path / "x.npy"), str(tmp_path / "out.npz")]
  if name != "revnet50":  # the ResNets' stage weights are the exported model's own layout
    args.append(wd.stage_weights_path(str(tmp_path / "run"), 1))
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
  result = subprocess.run([sys.executable, "-c", PLAIN_KERAS_LOADER, *args], cwd=str(cwd),
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / "out.npz")
  for stage, key in ((2, "export"), (1, "stage")):
    if f"{key}_b5" not in out:
      continue
    mine = backbones[stage - 1](x, training=False)
    for block in ("b1", "b3", "b5"):
      np.testing.assert_allclose(out[f"{key}_{block}"], np.asarray(mine[block]), rtol=1e-5,
                                 atol=1e-5)
  assert np.abs(out["export_b5"]).max() > 0
  assert not np.allclose(out["export_b5"], np.asarray(backbones[0](x, training=False)["b5"]))


def test_builtin_revnet_trains_like_the_custom_one():
  # In training mode too (fine-tuning the exported model): same outputs, same BN updates.
  from psl_tf.models import portable_backbone, revnet  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(4)
  custom = revnet.revnet50(filters_factor=1)
  plain = portable_backbone(custom)
  x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
  a, b = custom(x, training=True), plain(x, training=True)
  np.testing.assert_allclose(np.asarray(b["b5"]), np.asarray(a["b5"]), rtol=1e-5, atol=1e-5)
  moving = lambda m: {revnet.builtin_variable_path(v.path): np.asarray(v) for v in m.weights}
  mine, theirs = moving(custom), {v.path: np.asarray(v) for v in plain.weights}
  for path, value in mine.items():
    np.testing.assert_allclose(theirs[path], value, rtol=1e-5, atol=1e-6)


def test_backbones_saved_before_the_builtin_normalisation_still_load():
  # tests/fixtures/standardize_v0: a cifar_resnet (depth 10, width 4) saved when b1 began
  # with psl_tf's custom Standardize layer: its stage weights and its .keras file.
  fixture = os.path.join(ROOT, "tests", "fixtures", "standardize_v0")
  expected = np.load(os.path.join(fixture, "expected.npz"))
  backbone = build_backbone("cifar_resnet", depth=10, width=4)
  assert isinstance(backbone.get_layer("b1").get_layer("standardize"),
                    keras.layers.Normalization)
  wd.load_backbone_weights(backbone, os.path.join(fixture, "backbone.weights.h5"))
  np.testing.assert_allclose(np.asarray(backbone(expected["x"], training=False)["b5"]),
                             expected["b5"], rtol=1e-5, atol=1e-6)
  old = keras.saving.load_model(os.path.join(fixture, "backbone.keras"))  # psl_tf>Standardize
  np.testing.assert_allclose(np.asarray(old(expected["x"], training=False)["b5"]),
                             expected["b5"], rtol=1e-5, atol=1e-6)
