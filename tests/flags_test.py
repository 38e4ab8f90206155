"""Every flagfile parses into a valid run configuration, and the README keeps up with them."""

import glob
import os
import re

import pytest

from psl_tf import models
from psl_tf import recipes
from psl_tf import stages
from psl_tf import tasks
from psl_tf.cli import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The flagfiles ship inside the package; the checkout's flags/ points at them.
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "psl_tf", "flags", "*.flags")))


def test_there_are_flagfiles():
  names = {os.path.basename(p) for p in FLAGFILES}
  assert {"smoke.flags", "rotation_cifar10.flags", "rotation_cifar10_paper.flags",
          "rotation_imagenet_paper.flags"} <= names


def test_the_checkouts_flags_folder_is_the_packaged_one():
  # --flagfile=flags/x.flags keeps working in a checkout, and reads the packaged file.
  assert os.path.islink(os.path.join(ROOT, "flags"))
  assert os.path.samefile(os.path.join(ROOT, "flags"), os.path.join(ROOT, "psl_tf", "flags"))
  assert sorted(glob.glob(os.path.join(ROOT, "flags", "*.flags"))) == [
      os.path.join(ROOT, "flags", os.path.basename(p)) for p in FLAGFILES]


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses_to_a_config(path, train_flags):
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if line.startswith("--"):
        # absl keeps a trailing comment as part of the value.
        assert "#" not in line, f"{path}:{number}: trailing comment in {line!r}"
  train_flags(["psl_tf.train", f"--flagfile={path}"])
  config = train.config_from_flags(train_flags)
  task_cls = tasks.get_task_class(config.task)
  assert config.backbone in models.BACKBONES
  stage_list = stages.make_stages(config.mode, task_cls.num_levels, config.stages, config.levels)
  config.stage_epochs(len(stage_list))
  task_cls.from_config(config)


def _read(*parts):
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


def test_the_recipes_guide_names_every_flagfile_and_whether_it_was_measured():
  guide = _read("docs", "tasks_and_recipes.md")
  for path in FLAGFILES:
    name = os.path.basename(path)[:-len(".flags")]
    assert f"flags/{name}.flags" in guide, name
    rows = [l for l in guide.splitlines() if l.startswith(f"| `{name}` |")]
    assert len(rows) == 1, name
    said_unmeasured = "never run" in rows[0] or "claims no result" in rows[0]
    assert said_unmeasured != recipes.measured(name), (name, rows[0])


def test_readme_names_every_task_and_mode_and_the_recipe_to_start_from():
  readme = _read("README.md")
  for name in tasks.TASKS:
    assert f"`{name}`" in readme, name
  for mode in stages.MODES:
    assert f"`{mode}`" in readme, mode
  quick = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
  assert "python -m psl_tf.train --recipe=rotation_cifar10 " in quick
  assert recipes.measured("rotation_cifar10")


def test_readme_is_short_and_its_guides_exist():
  readme = _read("README.md")
  assert len(readme.splitlines()) < 250
  for guide in ("tasks_and_recipes.md", "evaluation.md", "distributed.md", "RELIABILITY.md",
                "RESULTS.md"):
    assert f"(docs/{guide})" in readme, guide


@pytest.mark.parametrize("doc", ["README.md", "docs/tasks_and_recipes.md", "docs/evaluation.md",
                                 "docs/distributed.md"])
def test_relative_links_resolve(doc):
  text = _read(doc)
  base = os.path.dirname(os.path.join(ROOT, doc))
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
    if "://" not in target:
      assert os.path.exists(os.path.join(base, target)), f"{doc}: {target}"


def test_readme_two_commands_are_the_ci_commands():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  block = re.search(r"## Set up and run.*?```bash\n(.*?)```", readme, re.S).group(1)
  setup, test = [l for l in block.splitlines() if l.strip()]
  assert "pip install -r requirements.txt" in setup and "python -m psl_tf.train" in setup
  assert test in ci, "the README's test command must be what CI runs"
