"""Misuse and faults that ended in a traceback or a silent wrong answer (issue 28, items
6-8): multi-worker without a cluster, a full disk, a damaged checkpoint, deleted weights,
bad evaluation flags, Ctrl-C, unwritable outputs, and inputs that teach nothing.

Each test backs one row of docs/RELIABILITY.md.
"""

import errno
import glob
import logging
import os
import signal
import subprocess
import sys

from absl import flags
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from psl_tf import distribute
from psl_tf import exporting as export_lib
from psl_tf import guards
from psl_tf import pretraining as pretrain
from psl_tf import progress
from psl_tf import workdir as wd
from psl_tf.evaluation import protocols
from psl_tf.models import build_backbone

import testutil
from testutil import ROOT


def _one_line(capsys, exit_info, code=2):
  assert exit_info.value.code == code
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1, lines
  return lines[0]


def _fake_run(workdir, stages=(1,)):
  """A demo work directory with finished stages, written without training (fast)."""
  wd.write_flags(workdir, {"task": "rotation", "mode": "psl", "dataset": "demo",
                           "backbone": "cifar_resnet", "depth": "10", "width": "8",
                           "image_size": "16", "workdir": workdir})
  for k in stages:
    wd.finish_stage(workdir, k, build_backbone("cifar_resnet", depth=10, width=8), {"stage": k})


def _images(folder, count, side=12):
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    Image.fromarray(np.full((side, side, 3), 20 * i % 256, np.uint8)).save(
        os.path.join(folder, f"{i}.png"))


# ---- 6. multi-worker without a cluster -----------------------------------------------------

def test_multi_worker_without_tf_config_is_one_line(tmp_path, parsed_flags, capsys, monkeypatch):
  # It trained as one worker, exit 0: on a cluster every machine would act as chief.
  from psl_tf.cli import train  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("TF_CONFIG", raising=False)
  flag_values = parsed_flags([f"--workdir={tmp_path}/w", "--strategy=multi_worker"])
  with pytest.raises(SystemExit) as exit_info:
    train.main(["psl_tf.train"], flag_values)
  line = _one_line(capsys, exit_info)
  assert "--strategy=multi_worker needs the TF_CONFIG environment variable" in line
  assert not os.path.exists(f"{tmp_path}/w")


@pytest.mark.parametrize("value, message", [
    ("{'cluster': ", "TF_CONFIG is not valid JSON"),
    ('["worker"]', 'TF_CONFIG has no "cluster"'),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'TF_CONFIG has no "task"'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
     "TF_CONFIG's task 'worker' 1 is not in its cluster (worker: 1)"),
])
def test_a_malformed_tf_config_is_one_line_naming_it(value, message, tmp_path, parsed_flags,
                                                     capsys, monkeypatch):
  from psl_tf.cli import train  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="TF_CONFIG"):
    distribute.check_tf_config(value)
  monkeypatch.setenv("TF_CONFIG", value)
  flag_values = parsed_flags([f"--workdir={tmp_path}/w", "--strategy=multi_worker"])
  with pytest.raises(SystemExit) as exit_info:
    train.main(["psl_tf.train"], flag_values)
  assert message in _one_line(capsys, exit_info)
  distribute.check_tf_config(
      '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", '
      '"index": 1}}')  # a good one passes


# ---- 7. one line instead of a traceback ----------------------------------------------------

def test_disk_full_during_training_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, parsed_flags, capsys, monkeypatch):
  from psl_tf.cli import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  saves = []
  real_save = tf.train.CheckpointManager.save

  def save(self, *args, **kwargs):  # the second epoch's checkpoint finds the disk full
    saves.append(1)
    if len(saves) == 2:
      raise tf.errors.ResourceExhaustedError(
          None, None, f"{self.directory}/ckpt-2.data-00000-of-00001.tempstate1; No space left "
          "on device")
    return real_save(self, *args, **kwargs)
  monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
  flag_values = parsed_flags([f"--workdir={workdir}", "--epochs=2", "--steps_per_epoch=1",
                              "--heldout_split=none", "--noexport", "--verbose=0"])
  with pytest.raises(SystemExit) as exit_info:
    train.main(["psl_tf.train"], flag_values)
  line = _one_line(capsys, exit_info)
  assert line.startswith("psl_tf.train: error: the disk is full under ")
  assert "ckpt-2.data" in line and "free some space and run the same command again" in line
  # Epoch 1's checkpoint stays: the same command resumes from it.
  assert tf.train.latest_checkpoint(os.path.join(workdir, "stage_1", "ckpt")).endswith("ckpt-1")


def test_disk_full_during_export_names_the_path(tmp_path, capsys, monkeypatch):
  from psl_tf.cli import export as export_cli  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  _fake_run(workdir)
  target = os.path.join(workdir, "export", "variables", "variables.data-00000-of-00001")

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", target)
  monkeypatch.setattr(export_lib, "export_backbone", full)
  with pytest.raises(guards.CannotContinue, match=f"the disk is full writing {target}"):
    export_lib.export_run(workdir)
  flag_values = export_cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.export", f"--workdir={workdir}"])
  with pytest.raises(SystemExit) as exit_info:
    export_cli.main(["psl_tf.export"], flag_values)
  assert f"the disk is full writing {target}" in _one_line(capsys, exit_info)


def test_a_corrupt_epoch_checkpoint_names_the_file_and_the_way_out(tmp_path, stop_after_epoch):
  workdir = str(tmp_path)
  config = testutil.tiny_config(workdir, epochs=(2,))
  strategy = distribute.make_strategy("one_device")
  with pytest.raises(stop_after_epoch.error):
    pretrain.run(config, strategy, log=lambda m: None,
                 callbacks=[stop_after_epoch("stage_1", 1)])
  ckpt_dir = os.path.join(workdir, "stage_1", "ckpt")
  index = glob.glob(os.path.join(ckpt_dir, "ckpt-1.index"))[0]
  with open(index, "r+b") as f:
    f.write(b"\0" * 64)
  with pytest.raises(guards.CannotContinue,
                     match=rf"stage 1's epoch checkpoint {ckpt_dir}/ckpt-1 cannot be read .*"
                     rf"delete {ckpt_dir} to restart stage 1 from its first epoch"):
    pretrain.run(config, strategy, log=lambda m: None)


def test_deleted_stage_weights_are_one_line_not_already_finished(tmp_path, caplog):
  # A folder data set of 6 training images (fewer than a batch of 8) and 10 test images.
  root = tmp_path / "data"
  for cls in ("a", "b"):
    _images(str(root / "train" / cls), 3)
    _images(str(root / "test" / cls), 5)
  workdir = str(tmp_path / "run")
  config = testutil.tiny_config(workdir, dataset=f"folder:{root}", heldout_split="auto",
                        image_check="none")
  strategy = distribute.make_strategy("one_device")
  messages = []
  with caplog.at_level(logging.WARNING):
    summary = pretrain.pretrain(config, strategy, log=messages.append)
  # Item 8: fewer training images than one batch; held-out accuracy on 10 images.
  assert "has 6 training images, fewer than one batch of 8" in caplog.text
  assert any("WARNING: stage 1: held-out pretext accuracy measured on 10 images only" in m
             for m in messages), messages
  table = progress.summary_table(summary, workdir)
  assert "WARNING: stage 3: held-out pretext accuracy measured on 10 images only" in table
  os.remove(wd.stage_weights_path(workdir, 2))
  messages.clear()
  with pytest.raises(guards.CannotContinue,
                     match=r"stage 2 is marked finished .* but its weights .*stage_2/backbone"
                     r".weights.h5 are missing; restore the file, or delete .*stage_2"):
    pretrain.pretrain(config, strategy, log=messages.append)
  assert not any("already finished" in m for m in messages), messages
  with pytest.raises(ValueError, match="stage 2 of .* is marked finished but its weights"):
    wd.load_run(workdir, 2)
  assert wd.load_run(workdir).stage == 3  # the last stage is whole


def _evaluate_cli(workdir, *args):
  from psl_tf.cli import evaluate as evaluate_cli  # pylint: disable=g-import-not-at-top
  flag_values = evaluate_cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.evaluate", f"--workdir={workdir}", *args])
  return lambda: evaluate_cli.main(["psl_tf.evaluate"], flag_values)


@pytest.mark.parametrize("fractions", ["0", "1.5", "-0.1", "0.1,2"])
def test_label_fractions_out_of_range_are_one_line_before_any_work(tmp_path, capsys, fractions):
  workdir = str(tmp_path / "run")
  _fake_run(workdir)
  with pytest.raises(SystemExit) as exit_info:
    _evaluate_cli(workdir, "--protocol=finetune", f"--label_fractions={fractions}")()
  line = _one_line(capsys, exit_info)
  assert "--label_fractions must be fractions in (0, 1]" in line and fractions in line
  assert not os.path.exists(os.path.join(workdir, "eval", "finetune_demo_stage1.json"))


def test_unwritable_evaluation_outputs_are_refused_before_the_evaluation(tmp_path, capsys):
  # Root writes into a chmod 555 folder, so unwritable places are ones nobody can write: a
  # folder under /proc, and an eval/ that is a file.
  workdir = str(tmp_path / "run")
  _fake_run(workdir)
  with pytest.raises(SystemExit) as exit_info:
    _evaluate_cli(workdir, "--output=/proc/psl_tf_report", "--epochs=1")()
  line = _one_line(capsys, exit_info)
  assert "cannot write the evaluation report into /proc/psl_tf_report" in line
  assert "nothing was computed" in line
  os.rmdir(os.path.join(workdir, "eval"))  # made (empty) by the check above
  with open(os.path.join(workdir, "eval"), "w") as f:
    f.write("a file where eval/ goes")
  with pytest.raises(ValueError, match=f"cannot write the evaluation's results into "
                     f"{workdir}/eval"):
    with protocols.hold_outputs([wd.load_run(workdir)], output=str(tmp_path / "report")):
      pass


@pytest.mark.parametrize("moment", ["== linear", "training linear probes"])
def test_ctrl_c_during_evaluation_is_one_line(tmp_path, moment):
  # At the first moment TensorFlow is still building the probes' pipeline and step, where a
  # KeyboardInterrupt was once swallowed and the evaluation ran on.
  workdir = str(tmp_path / "run")
  _fake_run(workdir)
  env = dict(os.environ, PYTHONPATH=ROOT)
  child = subprocess.Popen(
      [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}", "--epochs=100000",
       "--probe_inputs=images", "--verbose=2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  try:
    for line in child.stdout:  # wait until the probes train
      if moment in line:
        break
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
  finally:
    child.kill()
  lines = [l for l in err.splitlines() if l.strip()]
  assert child.returncode == 130, err[-2000:]
  assert lines[-1].startswith("psl_tf.evaluate: interrupted (Ctrl-C); no report was written")
  assert "Traceback" not in err


def test_visualize_output_naming_a_folder_is_one_line(tmp_path, capsys):
  from psl_tf.cli import visualize as visualize_cli  # pylint: disable=g-import-not-at-top
  flag_values = visualize_cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.visualize", f"--output={tmp_path}"])
  with pytest.raises(SystemExit) as exit_info:
    visualize_cli.main(["psl_tf.visualize"], flag_values)
  line = _one_line(capsys, exit_info)
  assert f"--output={tmp_path} is a folder; name the PNG file to write" in line


# ---- 8. inputs that teach nothing ----------------------------------------------------------

def test_a_probe_on_one_class_warns(tmp_path, caplog):
  # Two class folders, but every image of `b` is unreadable: the probes see class a only.
  root = tmp_path / "data"
  _images(str(root / "train" / "a"), 4)
  _images(str(root / "test" / "a"), 2)
  os.makedirs(root / "train" / "b")
  open(root / "train" / "b" / "broken.png", "wb").close()
  workdir = str(tmp_path / "run")
  _fake_run(workdir)
  with caplog.at_level(logging.WARNING):
    protocols.Evaluation(wd.load_run(workdir), protocols.Settings(dataset=f"folder:{root}"))
  assert "has images of one class only (label 0)" in caplog.text
  assert guards.one_class_warning([0, 1, 1], "x") is None
  assert "one class only" in guards.one_class_warning([2, 2], "the 1% label subset")
