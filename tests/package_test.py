"""The installable package: the Keras backend check, the API as plain functions, the console
scripts and the files a wheel must carry."""

import inspect
import json
import os
import subprocess
import sys
import tomllib

import pytest

import psl_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(args, tmp_path, **env):
  clean = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
  clean["PYTHONPATH"] = ROOT
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        cwd=str(tmp_path), env={**clean, **env}, timeout=120)


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_import_with_another_keras_backend_raises_one_clear_error(tmp_path, backend):
  result = _python(["-c", "import psl_tf"], tmp_path, KERAS_BACKEND=backend)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("ImportError: psl_tf needs Keras' TensorFlow backend")
  assert repr(backend) in last


@pytest.mark.parametrize("program", ["train", "evaluate", "export", "visualize"])
def test_programs_with_another_keras_backend_exit_2_in_one_line(tmp_path, program):
  result = _python(["-m", f"psl_tf.{program}", "--help"], tmp_path, KERAS_BACKEND="jax")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"psl_tf.{program}: error: psl_tf needs Keras' TensorFlow backend, but Keras is set to "
      "'jax'; unset KERAS_BACKEND or set KERAS_BACKEND=tensorflow"]


def test_backend_from_keras_json_counts_too(tmp_path):
  home = tmp_path / "kh"
  home.mkdir()
  (home / "keras.json").write_text(json.dumps({"backend": "jax"}))
  result = _python(["-m", "psl_tf.train", "--help"], tmp_path, KERAS_HOME=str(home))
  assert result.returncode == 2 and "set to 'jax'" in result.stderr
  (home / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
  result = _python(["-c", "import psl_tf; print(psl_tf.keras_backend())"], tmp_path,
                   KERAS_HOME=str(home))
  assert result.returncode == 0 and result.stdout.strip() == "tensorflow"


def test_api_is_plain_functions_with_signatures():
  for name in ("pretrain", "evaluate", "export", "load_run"):
    function = getattr(psl_tf, name)
    assert inspect.isfunction(function), name
    assert function.__doc__, name
  assert list(inspect.signature(psl_tf.export).parameters)[:2] == ["run", "stage"]
  assert inspect.isclass(psl_tf.Config)
  assert set(psl_tf.__all__) >= {"Config", "pretrain", "evaluate", "export", "load_run"}


def test_console_scripts_are_the_python_m_programs():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  scripts = project["scripts"]
  assert scripts == {f"psl-{name}": f"psl_tf.cli.{name}:run"
                     for name in ("train", "evaluate", "export", "visualize")}
  for name in ("train", "evaluate", "export", "visualize"):
    # `python -m psl_tf.<name>` runs the same function the console script calls.
    with open(os.path.join(ROOT, "psl_tf", f"{name}.py")) as f:
      shim = f.read()
    assert f"from psl_tf.cli import {name} as _cli" in shim and "_cli.run()" in shim
  assert set(project["optional-dependencies"]) >= {"test", "notebook", "gpu"}


def test_requirements_split_runtime_pins_from_test_pins():
  def pins(name):
    with open(os.path.join(ROOT, name)) as f:
      lines = [l.split("#")[0].strip() for l in f]
    return {l.split("==")[0].lower(): l for l in lines if l and not l.startswith("-r")}
  runtime, test = pins("requirements.txt"), pins("requirements-test.txt")
  assert all("==" in pin for pin in [*runtime.values(), *test.values()])
  for tool in ("pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "mypy"):
    assert tool in test and tool not in runtime, tool
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  assert "requirements.txt" in ci and "requirements-test.txt" in ci and "mypy" in ci
  # The reproduction scripts' pins: apart from the runtime's, reached by the test install.
  reproduce = pins("requirements-reproduce.txt")
  assert all("==" in pin for pin in reproduce.values())
  assert "scikit-learn" in reproduce and "scipy" in reproduce and "scikit-learn" not in runtime
  with open(os.path.join(ROOT, "requirements-test.txt")) as f:
    assert "-r requirements-reproduce.txt" in f.read()


def test_package_carries_its_typing_marker_license_and_citation():
  assert os.path.isfile(os.path.join(ROOT, "psl_tf", "py.typed"))
  with open(os.path.join(ROOT, "LICENSE")) as f:
    assert "Apache License" in f.read(500)
  with open(os.path.join(ROOT, "CITATION.cff")) as f:
    citation = f.read()
  assert "Progressive Stage-wise Learning for Unsupervised Feature Representation" in citation


@pytest.mark.slow  # integration tier: builds the wheel (seconds)
def test_wheel_carries_recipes_typing_marker_license_and_console_scripts(tmp_path):
  setuptools = pytest.importorskip("setuptools")
  if int(setuptools.__version__.split(".")[0]) < 77:
    pytest.skip("needs setuptools>=77 (requirements-test.txt) to build without isolation")
  import zipfile  # pylint: disable=g-import-not-at-top
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", str(tmp_path), ROOT],
                 check=True, timeout=600, cwd=str(tmp_path))
  (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
  with zipfile.ZipFile(tmp_path / wheel) as archive:
    names = set(archive.namelist())
    entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
  assert "psl_tf/py.typed" in names
  assert any(n.endswith("licenses/LICENSE") for n in names)
  flags_dir = os.path.join(ROOT, "psl_tf", "flags")
  recipes = sorted(n for n in os.listdir(flags_dir) if n.endswith(".flags")) if (
      os.path.isdir(flags_dir)) else []
  for name in recipes:  # every recipe ships, so an installed copy can run them
    assert f"psl_tf/flags/{name}" in names, name
  for name in ("train", "evaluate", "export", "visualize"):
    assert f"psl-{name} = psl_tf.cli.{name}:run" in entry_points.decode()
  # Every module of the tree is in the wheel.
  for dirpath, _, files in os.walk(os.path.join(ROOT, "psl_tf")):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/")
        assert rel in names, rel


def test_public_api_is_annotated():
  # mypy (CI) checks the annotations; this checks the API has them, config's included.
  from psl_tf import config, models, workdir  # pylint: disable=g-import-not-at-top
  from psl_tf.models import resnet, revnet  # pylint: disable=g-import-not-at-top
  from psl_tf.tasks import base  # pylint: disable=g-import-not-at-top
  contract = [f for name, f in vars(base.Task).items()
              if not name.startswith("_") and inspect.isfunction(f)]
  functions = [psl_tf.pretrain, psl_tf.evaluate, psl_tf.export, psl_tf.load_run,
               config.from_flags, config.to_flags, config.Config.stage_epochs,
               config.Config.backbone_kwargs, config.Config.resize_to.fget,
               models.build_backbone, models.portable_backbone, resnet.resnet50,
               resnet.cifar_resnet, revnet.revnet50, workdir.Run.build_backbone,
               base.Task.from_config.__func__, *contract]
  assert len(contract) >= 15
  for function in functions:
    signature = inspect.signature(function)
    name = function.__qualname__
    assert signature.return_annotation is not inspect.Signature.empty, name
    for parameter in signature.parameters.values():
      if parameter.name not in ("self", "cls"):
        assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)
