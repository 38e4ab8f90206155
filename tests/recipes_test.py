"""Recipes: packaged flagfiles, found by name, honest about what was measured.

A recipe that claims a result names the records under docs/results/ that show it, and trains
exactly what those records trained; one never run says so in its first comment lines.
"""

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from psl_tf import config as config_lib
from psl_tf import recipes
from psl_tf.cli import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a record's command set for its machine and its seed, not for what is learned; a
# recipe leaves them to the user (steps_per_epoch: 0 resolves to the same 390 on CIFAR-10).
RUN_SPECIFIC = {"dataset", "seed", "workdir", "steps_per_epoch", "image_check", "export",
                "verbose"}
CIFAR10_TRAIN_IMAGES = 50_000


def _command_flags(command):
  """{flag: text} of a recorded `python -m psl_tf.train ...` command; a later value wins."""
  args = shlex.split(command)
  values = {}
  for arg in args[args.index("psl_tf.train") + 1:]:
    name, _, text = arg[2:].partition("=")
    values[name] = text
  return values


def test_every_flagfile_is_a_recipe_and_the_names_are_what_they_are():
  names = recipes.names()
  assert names == sorted(os.path.basename(p)[:-len(".flags")]
                         for p in glob.glob(os.path.join(ROOT, "psl_tf", "flags", "*.flags")))
  for name in names:
    if name == "smoke":
      continue
    task, _, rest = name.partition("_")
    assert task in {"rotation", "jigsaw", "simclr", "mocov2"}, name
    assert recipes.load(name)["task"] == task, name
  # Per task and data size the plain name exists beside the paper's protocol.
  for paper in [n for n in names if n.endswith("_paper")]:
    if "cifar10" in paper:
      assert paper[:-len("_paper")] in names, paper


@pytest.mark.parametrize("name", recipes.names())
def test_a_recipe_says_what_it_is_and_whether_it_was_measured(name):
  lines = recipes.comments(name)
  assert len(lines) >= 2 and lines[0], name
  assert lines[1].startswith(("Measured", "Never run")), (name, lines[1])
  if recipes.measured(name):
    assert any(r.endswith("record.json") for r in recipes.records(name)), name
  else:
    assert not recipes.records(name), f"{name} is marked never run but names records"


@pytest.mark.parametrize("name", [n for n in recipes.names() if recipes.measured(n)])
def test_a_measured_recipe_trains_what_its_records_trained(name):
  config = recipes.config(name)
  texts = config_lib.to_flags(config)
  for record in recipes.records(name):
    assert os.path.exists(os.path.join(ROOT, record)), record
  seeds = []
  for record in [r for r in recipes.records(name) if r.endswith("record.json")]:
    # "<run>_s0/record.json (and _s1, ...)": every stored seed of the run.
    run_dir = os.path.dirname(record)
    seeds += sorted(glob.glob(os.path.join(ROOT, run_dir.rsplit("_s", 1)[0] + "_s*",
                                           "record.json")))
  assert seeds, name
  for path in seeds:
    with open(path) as f:
      command = json.load(f)["train_command"]
    recorded = _command_flags(command)
    run = config_lib.from_flags(recorded)
    theirs = config_lib.to_flags(run)
    for flag in sorted(set(texts) | set(theirs)):
      if flag not in RUN_SPECIFIC:
        assert texts.get(flag) == theirs.get(flag), (name, path, flag)
    assert "cifar10" in run.dataset and config.dataset == "cifar10"
    assert int(recorded["steps_per_epoch"]) == CIFAR10_TRAIN_IMAGES // config.batch_size
    assert config.steps_per_epoch == 0


def test_the_rotation_default_is_the_campaigns_winner_not_the_setting_that_lost():
  config = recipes.config("rotation_cifar10")
  assert (config.head_grid, config.lr_restart, config.lr_schedule) == (4, False, "cosine")
  assert (config.backbone, config.depth, config.width, config.image_size) == (
      "cifar_resnet", 10, 16, 32)
  assert (config.batch_size, config.epochs, config.optimizer, config.learning_rate) == (
      128, (5,), "sgd", 0.1)
  paper = recipes.config("rotation_cifar10_paper")
  assert (paper.head_grid, paper.lr_restart, paper.lr_schedule, paper.epochs) == (
      1, True, "step", (15,))


def test_explicit_flags_override_the_recipe_wherever_they_stand(train_flags, tmp_path):
  flagfile = tmp_path / "mine.flags"
  flagfile.write_text("--epochs=7\n")
  train_flags(["psl_tf.train", "--dataset=folder:/data/cifar10", "--recipe=rotation_cifar10",
               "--seed=3", f"--flagfile={flagfile}", "--head_grid=2"])
  config = train.config_from_flags(train_flags)
  assert config.dataset == "folder:/data/cifar10" and config.seed == 3  # before and after
  assert config.epochs == (7,) and config.head_grid == 2  # a flagfile's, a given one
  assert config.lr_restart is False and config.width == 16  # the rest is the recipe's
  assert config == recipes.config("rotation_cifar10", dataset="folder:/data/cifar10", seed=3,
                                  epochs=(7,), head_grid=2)


def test_a_recipe_alone_is_the_recipe(train_flags):
  train_flags(["psl_tf.train", "--recipe=jigsaw_cifar10"])
  config = train.config_from_flags(train_flags)
  assert config == recipes.config("jigsaw_cifar10")
  assert config == config_lib.from_flags(recipes.load("jigsaw_cifar10"))
  assert config.task_options.sizes == (50, 100, 200)


def test_an_unknown_recipe_is_one_line_naming_the_known_ones(train_flags, capsys):
  train_flags(["psl_tf.train", "--recipe=rotation_cifar100"])
  with pytest.raises(SystemExit) as exit_info:
    train.main(["psl_tf.train"], train_flags)
  assert exit_info.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1, lines
  assert lines[0].startswith("psl_tf.train: error: unknown recipe 'rotation_cifar100'; known: ")
  assert all(name in lines[0] for name in recipes.names())
  with pytest.raises(ValueError, match="unknown recipe 'x'; known: jigsaw_cifar10"):
    recipes.path("x")


def test_the_help_lists_the_recipes(train_flags):
  text = train_flags["recipe"].help
  assert all(name in text for name in recipes.names())
  listing = recipes.listing()
  assert "rotation_cifar10 " in listing and "[measured]" in listing and "[never run]" in listing


def test_recipes_are_found_in_an_installed_copy(tmp_path):
  # importlib.resources, not the checkout: a copy of the package elsewhere (as pip installs
  # it, without the repository's flags/ link) finds its recipes from any directory.
  site = tmp_path / "site"
  shutil.copytree(os.path.join(ROOT, "psl_tf"), site / "psl_tf",
                  ignore=shutil.ignore_patterns("__pycache__"))
  code = ("from psl_tf import recipes\n"
          "print(recipes.path('rotation_cifar10'))\n"
          "print(recipes.load('rotation_cifar10')['head_grid'])\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  where, head_grid = result.stdout.split()
  assert where == str(site / "psl_tf" / "flags" / "rotation_cifar10.flags")
  assert head_grid == "4"
