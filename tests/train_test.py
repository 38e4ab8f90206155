"""`python -m psl_tf.train` end to end: the work directory, export, resume, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from psl_tf import config as config_lib
from psl_tf import distribute
from psl_tf import pretraining as pretrain
from psl_tf import workdir as wd
from psl_tf.data import views
from psl_tf.models import build_backbone

import testutil
from testutil import ROOT
from testutil import SMOKE


def _cli(*args, timeout=300):
  # What a user sees, start-up noise included.
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return testutil.cli("psl_tf.train", *args, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  # --verbose=1 (the default) with stdout piped: what a log file of a real run gets.
  result = _cli("--task=rotation", f"--flagfile={SMOKE}", f"--workdir={workdir}", "--verbose=1")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_log_is_plain_lines_with_run_progress_and_summary(smoke_run):
  workdir, result = smoke_run
  for stream in (result.stdout, result.stderr):
    assert "\x1b" not in stream and "\r" not in stream  # no progress bar, no colour codes
  lines = result.stdout.splitlines()
  epoch_lines = [l for l in lines if l.startswith("[stage ")]
  assert [l.split(" epoch")[0] for l in epoch_lines] == [
      "[stage 1/3]", "[stage 2/3]", "[stage 3/3]"]
  assert all("img/s" in l and "ETA" in l and "pretext acc" in l for l in epoch_lines)
  assert "run 100 % done" in epoch_lines[-1]
  table = result.stdout[result.stdout.index("== summary"):]
  header = table.splitlines()[1].split()
  assert header[:4] == ["stage", "blocks", "level", "steps"] and "chance" in header
  rows = [l.split() for l in table.splitlines()[3:6]]
  assert [r[:3] for r in rows] == [["1", "B1-B3", "1"], ["2", "B2-B4", "2"], ["3", "B3-B5", "3"]]
  assert "50.0 %" in table.splitlines()[3] and "12.5 %" in table.splitlines()[5]  # chance
  assert f"python -m psl_tf.evaluate --workdir={workdir}" in table
  assert f"python -m psl_tf.export --workdir={workdir}" in table


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_work_directory_layout(smoke_run):
  workdir, result = smoke_run
  for k in (1, 2, 3):
    path = os.path.join(workdir, f"stage_{k}", "backbone.weights.h5")
    # Keras' own format: a backbone built with the run's flags loads it directly.
    build_backbone("cifar_resnet", depth=10, width=8).load_weights(path)
    assert not os.path.exists(os.path.join(workdir, f"stage_{k}", "ckpt"))
    assert os.listdir(os.path.join(workdir, "logs", f"stage_{k}"))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
  assert [s["level"] for s in summary["stages"]] == [1, 2, 3]
  for s in summary["stages"]:
    assert s["steps"] == 2 and np.isfinite(s["final_loss"]) and 0 <= s["pretext_accuracy"] <= 1
    assert s["wall_time_s"] > 0 and s["images_per_second"] > 0
    # Measured after the stage on the demo set's 200 held-out images, at the stage's level.
    assert s["heldout_images"] == 200 and 0 <= s["heldout_pretext_accuracy"] <= 1
    assert np.isfinite(s["heldout_loss"])
  assert "stage 3 held-out pretext accuracy" in result.stdout and "(chance 12.5 %)" in result.stdout
  # The header says which blocks train at which level; the end says where the export went.
  assert "stage 2/3 [psl]: train B2-B4, B1 frozen" in result.stdout
  assert f"exported the backbone (stage 3) to {workdir}/export" in result.stdout


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_flags_txt_is_a_reusable_flagfile(smoke_run):
  workdir, _ = smoke_run
  flags = wd.read_flags(workdir)
  assert flags["task"] == "rotation" and flags["image_size"] == "32"
  assert flags["workdir"] == workdir
  # Re-running with the recorded flags is a no-op resume, not an error.
  result = _cli(f"--flagfile={os.path.join(workdir, 'flags.txt')}", "--noexport")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("already finished") == 3


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_export_matches_the_keras_backbone(smoke_run):
  workdir, _ = smoke_run
  loaded = tf.saved_model.load(os.path.join(workdir, "export"))
  serve = loaded.signatures["serving_default"]
  images = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
  out = serve(images=tf.constant(images))
  backbone = build_backbone("cifar_resnet", depth=10, width=8)
  wd.load_backbone_weights(backbone, wd.stage_weights_path(workdir, 3))
  # The export's preprocessing is the evaluation view: shorter side to 37 (32 x 256/224),
  # central 32 x 32 crop.
  view = views.eval_view_fn(32, 37)
  x = tf.stack([view(image, 0, None)[0] for image in images])
  expected = backbone(x, training=False)
  for name in ("b1", "b2", "b3", "b4", "b5"):
    np.testing.assert_allclose(out[name].numpy(), expected[name].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[f"{name}_pool"].numpy(),
                               expected[name].numpy().mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("replicas", [1, 2])
def test_resume_mid_stage_continues_from_the_last_epoch(tmp_path, stop_after_epoch, replicas,
                                                       request):
  # Stage 2 has the three epochs the kill lands inside; stages 1 and 3 one each. One batch
  # of held-out images per stage keeps the held-out pass (under both strategies) cheap.
  config = config_lib.Config(
      task="rotation", dataset="demo", backbone="cifar_resnet", depth=10, width=8,
      image_size=16, head_hidden=16, batch_size=8, epochs=(1, 3, 1), steps_per_epoch=2,
      heldout_examples=8, workdir=str(tmp_path), export=False, verbose=0)
  strategy = (distribute.make_strategy("one_device") if replicas == 1
              else request.getfixturevalue("two_replica_strategy"))
  with pytest.raises(stop_after_epoch.error):
    pretrain.run(config, strategy, log=lambda m: None,
                 callbacks=[stop_after_epoch("stage_2", 2)])
  stage1 = wd.stage_weights_path(str(tmp_path), 1)
  stamp = os.stat(stage1).st_mtime_ns
  ckpt = tf.train.latest_checkpoint(os.path.join(str(tmp_path), "stage_2", "ckpt"))
  seconds_before = tf.train.load_variable(ckpt, "training_seconds/.ATTRIBUTES/VARIABLE_VALUE")
  curve_before = tf.train.load_variable(ckpt, "epoch_curve/.ATTRIBUTES/VARIABLE_VALUE")
  assert seconds_before > 0 and np.isfinite(curve_before[:2]).all()
  assert np.isnan(curve_before[2]).all()
  messages = []
  summary = pretrain.run(config, strategy, log=messages.append)
  assert os.stat(stage1).st_mtime_ns == stamp  # stage 1 not repeated
  assert any("stage 1/3 already finished" in m for m in messages)
  assert any("resuming stage 2 from epoch 2" in m for m in messages)
  by_stage = {s["stage"]: s for s in summary["stages"]}
  assert by_stage[2]["resumed_from_epoch"] == 2 and by_stage[3]["resumed_from_epoch"] == 0
  assert all(wd.stage_done(str(tmp_path), k) for k in (1, 2, 3))
  # The resumed stage reports its whole training: the epochs and seconds of both processes.
  assert by_stage[2]["epoch_losses"][:2] == [round(float(l), 5) for l in curve_before[:2, 0]]
  assert len(by_stage[2]["epoch_losses"]) == 3
  assert by_stage[2]["wall_time_s"] > seconds_before
  assert by_stage[2]["pretext_accuracy"] is not None
  assert [s["heldout_images"] for s in summary["stages"]] == [8, 8, 8]


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_killed_process_resumes_without_repeating_stage_1(tmp_path):
  workdir = str(tmp_path)
  args = [sys.executable, "-m", "psl_tf.train", "--task=rotation", f"--flagfile={SMOKE}",
          "--epochs=3", "--steps_per_epoch=3", f"--workdir={workdir}", "--noexport"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user sees, start-up noise included
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  stage1 = wd.stage_weights_path(workdir, 1)
  deadline = time.time() + 240
  while not os.path.exists(stage1) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # The kill landed mid-run: the process died by it, after stage 1 and before stage 3.
  assert proc.returncode == -signal.SIGKILL, proc.returncode
  assert os.path.exists(stage1) and not wd.stage_done(workdir, 3)
  stamp = os.stat(stage1).st_mtime_ns
  result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "stage 1/3 already finished" in result.stdout
  assert "== stage 1/3 [psl]: train" not in result.stdout
  assert os.stat(stage1).st_mtime_ns == stamp
  assert all(wd.stage_done(workdir, k) for k in (1, 2, 3))


@pytest.mark.parametrize("args, message", [
    (["--task=jigsaw2"], "unknown task 'jigsaw2'; known: "),
    (["--dataset=no_such_set"], "unknown data set 'no_such_set'"),
    (["--dataset=folder:/no/such/dir"], "folder:/no/such/dir is not a readable directory"),
    (["--stages=1-3,5-4"], "must satisfy 1 <= first <= last <= 5"),
    (["--backbone=resnet51"], "unknown backbone 'resnet51'"),
    (["--epochs=2,2"], "--epochs gives 2 values for 3 stages"),
    (["--epochs=two"], "--epochs takes whole numbers"),
    (["--workdir=/proc/psl_tf_test"], "cannot write the work directory /proc/psl_tf_test"),
])
def test_user_errors_are_one_line(args, message, tmp_path, parsed_flags, capsys):
  from psl_tf.cli import train  # pylint: disable=g-import-not-at-top
  extra = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path}/w"]
  flag_values = parsed_flags(extra + args)
  with pytest.raises(SystemExit) as exit_info:
    train.main(["psl_tf.train"], flag_values)
  assert exit_info.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
@pytest.mark.parametrize("args, message", [
    (["--task=jigsaw2"], "psl_tf.train: error: unknown task 'jigsaw2'; known: "),
    (["--mode=psl2"], "flag --mode=psl2: value should be one of <psl|sl|psl_f|e2e|greedy>"),
])
def test_command_line_errors_are_one_line_without_start_up_noise(args, message, tmp_path):
  result = _cli(f"--flagfile={SMOKE}", f"--workdir={tmp_path}/w", *args)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
def test_changed_flags_on_an_existing_workdir_are_refused(smoke_run):
  workdir, _ = smoke_run
  result = _cli(f"--flagfile={os.path.join(workdir, 'flags.txt')}", "--learning_rate=0.5")
  assert result.returncode == 2
  assert "holds a run with other flags (--learning_rate=0.003 -> 0.5)" in result.stderr


def test_an_epoch_checkpoint_without_time_and_curve_still_restores(tmp_path):
  # Checkpoints written before the stage's time and curve were checkpointed (a campaign's
  # interrupted run) restore their model, optimizer and epoch; time and curve stay unset.
  path = tf.train.Checkpoint(model=tf.Module(), optimizer=tf.Module(),
                             epoch=tf.Variable(3, dtype=tf.int64)).save(
      str(tmp_path / "old" / "ckpt"))
  core = {"model": tf.Module(), "optimizer": tf.Module(), "epoch": tf.Variable(0, dtype=tf.int64)}
  seconds, curve = tf.Variable(0.0, dtype=tf.float64), tf.Variable([[np.nan, np.nan]])
  full = tf.train.Checkpoint(**core, training_seconds=seconds, epoch_curve=curve)
  pretrain.restore_epoch_checkpoint(path, core, full)
  assert int(core["epoch"].numpy()) == 3 and float(seconds.numpy()) == 0.0
  # A new checkpoint restores everything.
  seconds.assign(12.5)
  curve.assign([[0.5, 0.75]])
  new_path = full.save(str(tmp_path / "new" / "ckpt"))
  core2 = {"model": tf.Module(), "optimizer": tf.Module(), "epoch": tf.Variable(0, dtype=tf.int64)}
  seconds2, curve2 = tf.Variable(0.0, dtype=tf.float64), tf.Variable([[np.nan, np.nan]])
  pretrain.restore_epoch_checkpoint(new_path, core2, tf.train.Checkpoint(
      **core2, training_seconds=seconds2, epoch_curve=curve2))
  assert float(seconds2.numpy()) == 12.5 and curve2.numpy().tolist() == [[0.5, 0.75]]
  assert int(core2["epoch"].numpy()) == 3


def test_the_command_line_and_the_python_api_are_one_path(tmp_path, train_flags, capsys):
  # The CLI parses its flags into a Config and calls psl_tf.pretrain: the same flags.txt, and
  # online probes on both paths.
  import psl_tf  # pylint: disable=g-import-not-at-top
  from psl_tf import recipes  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  # One batch of held-out images per stage (the recipe's 200 only cost time here).
  config = recipes.config("smoke", workdir=workdir, online_probes=True, export=False,
                          heldout_examples=16)
  summary = psl_tf.pretrain(config)
  history = summary["online_probes"]
  assert [(h["stage"], h["epoch"]) for h in history] == [(1, 1), (2, 1), (3, 1)]
  assert "probe_b3" in history[0] and "val_probe_b5" in history[2]
  with open(os.path.join(workdir, wd.FLAGS_FILE)) as f:
    written_by_the_api = f.read()
  assert wd.read_flags(workdir) == config_lib.to_flags(config)
  # The same run from the command line: it resumes (every stage done) and writes flags.txt
  # again (a new file: its time stamp moves), byte for byte the same. (Removing flags.txt
  # instead would make the folder "not a psl_tf run", which is refused.)
  flags_path = os.path.join(workdir, wd.FLAGS_FILE)
  os.utime(flags_path, (0, 0))
  train_flags(["psl_tf.train", "--recipe=smoke", f"--workdir={workdir}", "--online_probes",
               "--noexport", "--heldout_examples=16"])
  train.main(["psl_tf.train"], train_flags)
  assert train.config_from_flags(train_flags) == config
  assert os.stat(flags_path).st_mtime > 0
  with open(flags_path) as f:
    assert f.read() == written_by_the_api
  out = capsys.readouterr().out
  assert out.count("already finished") == 3 and "== summary" in out
  assert json.load(open(os.path.join(workdir, "summary.json")))["online_probes"] == history
