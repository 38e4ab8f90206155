"""BUILD names every module, entry point, test and script, with deps from the imports."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gen_build  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_build_file_matches_the_tree():
  result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_build.py"),
                           "--check"], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_every_module_and_test_is_named():
  with open(os.path.join(ROOT, "BUILD")) as f:
    build = f.read()
  for path in gen_build.package_modules():
    assert f'srcs = ["{path}"]' in build, path
  for name in os.listdir(os.path.join(ROOT, "tests")):
    if name.endswith("_test.py"):
      assert f'srcs = ["tests/{name}"]' in build, name


def test_deps_follow_imports():
  deps = gen_build.local_deps("psl_tf/trainer.py")
  assert ":optim" in deps and ":models_blocks" in deps
  assert gen_build.target_name("psl_tf/models/__init__.py") == "models"
