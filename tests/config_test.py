"""One typed path between flags and a Config, for every task, and old flags.txt files.

`tests/fixtures/flags_v0_<task>.txt` are flags.txt files written by the code before the typed
configuration (main at b5dbc48: `train.resolved_flags` on a command line with non-default
options of each task), as the runs of a campaign started then have them.
"""

import dataclasses
import os
import shutil

import pytest

from psl_tf import config as config_lib
from psl_tf import pretraining as pretrain
from psl_tf import tasks
from psl_tf import workdir as wd
from psl_tf.cli import flagdefs
from psl_tf.cli import train

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# Settings added after the fixtures were written, with the default an old run reads them as.
ADDED_SINCE_V0 = {"head_grid": "1", "lr_restart": "true"}


def _fixture_values(task):
  return wd.read_flags_file(os.path.join(FIXTURES, f"flags_v0_{task}.txt"))


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_flags_txt_to_config_to_flags_round_trips(task):
  values = _fixture_values(task)
  config = config_lib.from_flags(values)
  texts = config_lib.to_flags(config)
  # Every setting of the run (Config fields and this task's options) comes back as the same
  # text; the other flags of flags.txt are not settings of this run.
  settings = {f.name for f in config_lib.options_of(config_lib.Config)}
  settings |= set(config_lib.task_option_fields(config.task_options))
  expected = {name: text for name, text in values.items() if name in settings}
  assert texts == expected | ADDED_SINCE_V0
  assert config_lib.from_flags(texts) == config


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_the_command_line_reads_old_flags_txt_files_into_the_same_run(task, train_flags,
                                                                      tmp_path):
  # An old flags.txt (every flag of the command line then, other tasks' options and launch
  # flags included) given back as a flagfile makes the same Config; the flags.txt written now
  # (`to_flags`, by psl_tf.pretrain for the command line and the Python API alike) keeps every
  # setting of the old file unchanged, plus the settings added since at their defaults; and
  # the old run resumes under the new check.
  values = _fixture_values(task)
  fixture = os.path.join(FIXTURES, f"flags_v0_{task}.txt")
  train_flags(["psl_tf.train", f"--flagfile={fixture}"])
  config = train.config_from_flags(train_flags)
  assert config == config_lib.from_flags(values)
  settings = set(config_lib.to_flags(config))
  assert config_lib.to_flags(config) == {
      name: text for name, text in values.items() if name in settings} | ADDED_SINCE_V0
  workdir = str(tmp_path / "old_run")
  wd.write_flags(workdir, values | {"workdir": workdir})
  pretrain.check_resume(dataclasses.replace(config, workdir=workdir))


def test_task_options_come_back_typed():
  config = config_lib.from_flags(_fixture_values("jigsaw"))
  options = config.task_options
  assert options.normalize is False  # the string 'false' used to come back, which is true
  assert options.sizes == (4, 8, 16) and options.color_jitter == 0.4
  assert config.epochs == (3, 2, 1) and config.optimizer == "sgd"
  simclr = config_lib.from_flags(_fixture_values("simclr")).task_options
  assert simclr.temperature == 0.5 and simclr.lr_scaling == "sqrt" and simclr.blur_prob == 0.0
  moco = config_lib.from_flags(_fixture_values("mocov2"))
  assert moco.task_options.queue_size == 1024 and moco.warmup_epochs == 2.5
  assert tasks.build_task("jigsaw", config).normalize is False


def test_a_dict_of_options_is_typed_and_checked():
  config = config_lib.Config(task="jigsaw", task_options={"normalize": "false",
                                                          "sizes": "4,8,16"})
  assert config.task_options.normalize is False and config.task_options.sizes == (4, 8, 16)
  with pytest.raises(ValueError, match="unknown options .'temperature'."):
    config_lib.Config(task="jigsaw", task_options={"temperature": 0.1})
  with pytest.raises(ValueError, match="--simclr_temperature=0.0 is out of range"):
    config_lib.Config(task="simclr", task_options={"temperature": 0})
  with pytest.raises(ValueError, match="--contrastive_blur_prob=2.0 is out of range"):
    tasks.build_task("mocov2", blur_prob=2)
  with pytest.raises(ValueError, match="--learning_rate=-1.0 is out of range"):
    config_lib.Config(learning_rate=-1)
  with pytest.raises(ValueError, match="--mode=psl2 is not one of"):
    config_lib.from_flags({"mode": "psl2"})


def test_flags_are_generated_from_the_declarations(train_flags):
  # One flag per Config field and per task option (shared contrastive options once), with
  # the declared default; defaults are not written twice.
  names = set(flagdefs.declarations())
  for field in config_lib.options_of(config_lib.Config):
    assert field.name in names
  for cls in tasks.TASKS.values():
    for flag, field in config_lib.task_option_fields(cls.Options).items():
      assert flag in names
      assert config_lib.to_text(field, field.default) == flagdefs.flag_text(
          train_flags[flag].default)
  assert flagdefs.RESUME_SAFE >= {"strategy", "verbose", "export", "jigsaw_cache_dir"}
  assert "learning_rate" not in flagdefs.RESUME_SAFE


def test_an_old_flags_txt_still_loads_and_resumes(tmp_path):
  workdir = str(tmp_path / "old_run")
  os.makedirs(workdir)
  old = os.path.join(FIXTURES, "flags_v0_rotation.txt")
  with open(old) as f:
    text = f.read().replace("--workdir=runs/v0_rotation", f"--workdir={workdir}")
  with open(os.path.join(workdir, wd.FLAGS_FILE), "w") as f:
    f.write(text)
  config = wd.config_from_workdir(workdir)
  assert config.task_options.crop == "per_angle" and config.width == 4
  pretrain.check_resume(config)  # the same run: resumes
  pretrain.check_resume(config_lib.Config(**{**_kwargs(config), "verbose": 2}))  # resume-safe
  with pytest.raises(ValueError, match=r"--learning_rate=0.003 -> 0.5"):
    pretrain.check_resume(config_lib.Config(**{**_kwargs(config), "learning_rate": 0.5}))
  # A finished stage written by the old code opens as a run.
  from psl_tf.models import build_backbone  # pylint: disable=g-import-not-at-top
  wd.save_backbone_weights(build_backbone("cifar_resnet", **config.backbone_kwargs()),
                           wd.stage_weights_path(workdir, 1))
  run = wd.load_run(workdir)
  assert run.stage == 1 and run.build_backbone().count_params() > 0


def test_a_flag_added_later_does_not_block_resuming_an_old_run(tmp_path):
  # An older flags.txt without a setting counts as that setting's default.
  workdir = str(tmp_path / "older")
  values = _fixture_values("rotation")
  values["workdir"] = workdir
  del values["cache"], values["precision"]
  wd.write_flags(workdir, values)
  pretrain.check_resume(wd.config_from_workdir(workdir))
  shutil.rmtree(workdir)


def _kwargs(config):
  return {f.name: getattr(config, f.name) for f in config_lib.options_of(config_lib.Config)} | {
      "task_options": config.task_options}


def test_entry_points_import_together_and_define_no_flags():
  # Used to raise DuplicateFlagError: evaluate and export defined --workdir at import.
  import inspect  # pylint: disable=g-import-not-at-top
  import psl_tf  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import evaluate, export, train, visualize  # pylint: disable=g-import-not-at-top,unused-import
  from absl import flags  # pylint: disable=g-import-not-at-top
  assert "protocol" not in flags.FLAGS and "learning_rate" not in flags.FLAGS
  # The API is plain functions (not modules made callable), also after every program and
  # library module was imported.
  for name in ("pretrain", "evaluate", "export", "load_run"):
    assert inspect.isfunction(getattr(psl_tf, name)), name
  assert psl_tf.export.__module__ == "psl_tf.exporting"
  assert psl_tf.pretrain.__module__ == "psl_tf.pretraining"
  assert psl_tf.Config().workdir == "runs/rotation_psl_demo"
