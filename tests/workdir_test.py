"""The work directory belongs to one psl_tf run (issue 28, items 3-5): start-up clean-up
touches only psl_tf's own names in a psl_tf run, a second process on a run in use is
refused, and flags.txt is written atomically and read only when complete.

Each test backs one row of docs/RELIABILITY.md.
"""

import dataclasses
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import pretraining
from psl_tf import runlock
from psl_tf import workdir as wd

import testutil
from testutil import ROOT
from testutil import SMOKE


def _user_folder(path):
  """A folder of a user's files that happen to look like psl_tf's temporary names."""
  os.makedirs(os.path.join(path, "download.partial"))
  os.makedirs(os.path.join(path, "stage_1"))
  paths = [os.path.join(path, "notes.tmp"), os.path.join(path, "download.partial", "part1"),
           os.path.join(path, "stage_1", "tmp_results.h5")]
  for p in paths:
    with open(p, "w") as f:
      f.write("mine")
  return paths


# ---- 3. start-up clean-up ------------------------------------------------------------------

def test_clean_up_never_touches_a_folder_that_is_not_a_run(tmp_path):
  paths = _user_folder(str(tmp_path))
  assert wd.remove_temporary_files(str(tmp_path)) == []
  assert all(os.path.exists(p) for p in paths)


def test_clean_up_in_a_run_removes_only_names_psl_tf_writes(tmp_path):
  workdir = str(tmp_path)
  wd.write_flags(workdir, {"task": "rotation", "workdir": workdir})
  users = _user_folder(workdir)
  os.makedirs(os.path.join(workdir, "notes_stage", ))
  ours = [os.path.join(workdir, "stage_1", "tmpk3_9xq2a.weights.h5"),
          os.path.join(workdir, "stage_1", "stage_summary.json.tmp"),
          os.path.join(workdir, "summary.json.tmp"), os.path.join(workdir, "flags.txt.tmp")]
  for p in ours:
    open(p, "w").close()
  os.makedirs(os.path.join(workdir, "export.partial", "variables"))
  removed = wd.remove_temporary_files(workdir)
  assert sorted(removed) == sorted(ours + [os.path.join(workdir, "export.partial")])
  assert all(os.path.exists(p) for p in users)


def test_a_non_empty_workdir_that_is_not_a_run_is_refused(tmp_path):
  wd.check_new_or_run(str(tmp_path / "new"))  # missing: fine
  os.makedirs(tmp_path / "empty")
  open(tmp_path / "empty" / wd.LOCK_FILE, "w").close()  # only a lock: a run killed at start
  open(tmp_path / "empty" / "flags.txt.tmp", "w").close()  # ... or in its first flags.txt
  wd.check_new_or_run(str(tmp_path / "empty"))
  paths = _user_folder(str(tmp_path / "mine"))
  with pytest.raises(ValueError, match=r"not empty \(download.partial, notes.tmp, stage_1\) "
                     "and is not a psl_tf run"):
    wd.check_new_or_run(str(tmp_path / "mine"))
  line = testutil.one_line_error(testutil.cli("psl_tf.train", f"--flagfile={SMOKE}",
                              f"--workdir={tmp_path / 'mine'}"), "psl_tf.train")
  assert "is not a psl_tf run" in line
  assert all(os.path.exists(p) for p in paths)
  assert sorted(os.listdir(tmp_path / "mine")) == ["download.partial", "notes.tmp", "stage_1"]


# ---- 4. one run per work directory ---------------------------------------------------------

_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from psl_tf import runlock
runlock.acquire({workdir!r}, "psl_tf.train")
print("locked", flush=True)
time.sleep(600)
"""


def _holder(workdir):
  """A process holding `workdir`'s lock (it has printed 'locked' when this returns)."""
  child = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=ROOT, workdir=workdir)],
                           stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "locked"
  return child


def test_a_second_process_on_a_run_in_use_is_refused_naming_it(tmp_path):
  workdir = str(tmp_path / "run")
  child = _holder(workdir)
  try:
    with pytest.raises(runlock.WorkdirInUse,
                       match=rf"in use by psl_tf.train \(pid {child.pid} on "):
      runlock.acquire(workdir, "psl_tf.evaluate")
    line = testutil.one_line_error(testutil.cli("psl_tf.train", f"--flagfile={SMOKE}", f"--workdir={workdir}"),
                           "psl_tf.train")
    assert f"pid {child.pid}" in line and "in use by psl_tf.train" in line
    assert not os.path.exists(os.path.join(workdir, wd.FLAGS_FILE))  # wrote nothing
  finally:
    child.kill()
    child.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
  workdir = str(tmp_path / "run")
  child = _holder(workdir)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert "psl_tf.train" in open(os.path.join(workdir, wd.LOCK_FILE)).read()  # still there
  path = runlock.acquire(workdir, "psl_tf.export")
  try:
    assert runlock.acquire(workdir, "psl_tf.export") == path  # re-entrant in one process
    runlock.release(path)
  finally:
    runlock.release(path)
  child = _holder(workdir)  # released: another process gets it
  child.kill()
  child.wait()


def test_evaluate_and_export_on_a_run_in_use_are_refused(tmp_path):
  from psl_tf import exporting as export_lib  # pylint: disable=g-import-not-at-top
  from psl_tf.evaluation import protocols  # pylint: disable=g-import-not-at-top
  from psl_tf.models import build_backbone  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  wd.write_flags(workdir, {"task": "rotation", "backbone": "cifar_resnet", "depth": "10",
                           "width": "8", "image_size": "16", "workdir": workdir})
  wd.save_backbone_weights(build_backbone("cifar_resnet", depth=10, width=8),
                           wd.stage_weights_path(workdir, 1))
  child = _holder(workdir)
  try:
    with pytest.raises(runlock.WorkdirInUse, match=f"pid {child.pid}"):
      export_lib.export_run(workdir)
    with pytest.raises(runlock.WorkdirInUse, match=f"pid {child.pid}"):
      with protocols.hold_outputs([wd.load_run(workdir)]):
        pass
    assert not os.path.exists(os.path.join(workdir, "export"))
  finally:
    child.kill()
    child.wait()


# ---- 5. flags.txt --------------------------------------------------------------------------

def test_flags_txt_is_replaced_atomically(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  wd.write_flags(workdir, {"task": "rotation", "dataset": "folder:/data", "workdir": workdir})
  before = open(os.path.join(workdir, wd.FLAGS_FILE)).read()

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed before the rename")
  monkeypatch.setattr(tf.io.gfile, "rename", killed)
  with pytest.raises(KeyboardInterrupt):
    wd.write_flags(workdir, {"task": "jigsaw", "dataset": "demo", "workdir": workdir})
  assert open(os.path.join(workdir, wd.FLAGS_FILE)).read() == before  # the old one, whole
  monkeypatch.undo()
  wd.remove_temporary_files(workdir)
  assert sorted(os.listdir(workdir)) == [wd.FLAGS_FILE]


@pytest.mark.parametrize("damage", ["empty", "mid_line", "line_boundary", "zeros"])
def test_a_flags_txt_cut_short_is_refused_naming_it(tmp_path, damage):
  workdir = str(tmp_path)
  wd.write_flags(workdir, {"task": "rotation", "dataset": "folder:/data", "width": "8",
                           "workdir": workdir})
  path = os.path.join(workdir, wd.FLAGS_FILE)
  text = open(path).read()
  cut = {"empty": "", "mid_line": text[:text.index("--width") + 4],
         "line_boundary": text[:text.index("--workdir")], "zeros": "\0" * len(text)}[damage]
  with open(path, "w") as f:
    f.write(cut)
  with pytest.raises(ValueError, match=f"{path} is not a complete flags.txt"):
    wd.config_from_workdir(workdir)
  if damage == "line_boundary":  # it was read as defaults: the demo set was evaluated
    line = testutil.one_line_error(testutil.cli("psl_tf.evaluate", f"--workdir={workdir}"), "psl_tf.evaluate")
    assert f"{path} is not a complete flags.txt" in line


def _damaged_run(workdir, config, keep):
  """A work directory whose flags.txt, written from `config`, was cut short after the line of
  `--<keep>` and in the middle of the next (a kill half-way through a write)."""
  wd.write_flags(workdir, config_lib.to_flags(config))
  path = os.path.join(workdir, wd.FLAGS_FILE)
  text = open(path).read()
  end = text.index("\n", text.index(f"--{keep}=")) + 1
  with open(path, "w") as f:
    f.write(text[:end + 5])
  return path


def test_repair_flags_rewrites_a_damaged_flags_txt_from_the_run_s_own_flags(tmp_path):
  workdir = str(tmp_path)
  config = config_lib.Config(task="rotation", dataset="demo", width=8, learning_rate=0.05,
                             workdir=workdir)
  path = _damaged_run(workdir, config, keep="learning_rate")
  damaged = open(path).read()
  with pytest.raises(ValueError, match="--repair_flags"):
    wd.config_from_workdir(workdir)
  message = pretraining.repair_flags(config)
  assert message is not None and f"{path}.damaged" in message
  assert wd.config_from_workdir(workdir) == config  # whole again, and the run's
  assert open(path + ".damaged").read() == damaged
  assert pretraining.repair_flags(config) is None  # a whole flags.txt: nothing to repair
  pretraining.check_resume(config)


def test_repair_flags_refuses_flags_that_disagree_with_what_is_left(tmp_path):
  workdir = str(tmp_path)
  run = config_lib.Config(task="rotation", dataset="demo", learning_rate=0.05, workdir=workdir)
  path = _damaged_run(workdir, run, keep="learning_rate")
  damaged = open(path).read()
  other = dataclasses.replace(run, learning_rate=0.1)
  with pytest.raises(pretraining.ConfigError, match="--learning_rate=0.05 -> 0.1"):
    pretraining.repair_flags(other)
  assert open(path).read() == damaged and not os.path.exists(path + ".damaged")
  # A setting summary.json keeps is checked too, wherever the cut was.
  wd.write_summary(workdir, {"task": "rotation", "dataset": "demo", "batch_size": 64,
                             "export": "elsewhere"})
  with pytest.raises(pretraining.ConfigError, match="--batch_size=64 -> 32"):
    pretraining.repair_flags(dataclasses.replace(run, batch_size=32))
  # A flag after the cut cannot be checked: the user's word is taken for it, and said so.
  message = pretraining.repair_flags(dataclasses.replace(run, width=8))
  assert message is not None and "could not be checked" in message


def test_train_repair_flags_repairs_before_the_run_starts(tmp_path, train_flags, monkeypatch,
                                                         capsys):
  from psl_tf.cli import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  train_flags(["psl_tf.train", f"--flagfile={SMOKE}", f"--workdir={workdir}"])
  path = _damaged_run(workdir, train.config_from_flags(train_flags), keep="dataset")

  class Started(Exception):
    """Pre-training was called (it is not run here), with flags.txt as it then was."""

  def started(config, *args, **kwargs):
    raise Started(open(path).read())
  monkeypatch.setattr(pretraining, "pretrain", started)
  train_flags.unparse_flags()
  train_flags(["psl_tf.train", f"--flagfile={SMOKE}", f"--workdir={workdir}", "--repair_flags"])
  with pytest.raises(Started) as flags_at_start:
    train.main(["psl_tf.train"], train_flags)
  assert f"{path} was damaged" in capsys.readouterr().out
  config = train.config_from_flags(train_flags)
  assert wd.read_flags_file(path) == config_lib.to_flags(config)
  assert str(flags_at_start.value) == open(path).read()  # repaired before the run started
