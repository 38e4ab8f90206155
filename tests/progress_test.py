"""Progress lines and the end-of-run table (`psl_tf.progress`)."""

import io
import pytest

from psl_tf import progress


class _FakeTTY(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_only_on_a_terminal():
  assert progress.fit_verbose(1, _FakeTTY()) == 1
  assert progress.fit_verbose(1, io.StringIO()) == 0  # a pipe or a log file: plain lines
  assert progress.fit_verbose(2, _FakeTTY()) == 0
  assert progress.fit_verbose(0, _FakeTTY()) == 0


def test_format_duration():
  assert progress.format_duration(42.4) == "42s"
  assert progress.format_duration(185) == "3m05s"
  assert progress.format_duration(3720) == "1h02m"


def test_run_progress_counts_the_whole_run_and_estimates_eta():
  now = [0.0]
  lines = []
  run = progress.RunProgress({1: 20, 2: 20, 3: 20}, batch_size=8, log=lines.append,
                             clock=lambda: now[0])
  run.skip(20)  # stage 1 finished in an earlier process
  callback = run.callback(stage=2, num_stages=3, epochs=2, steps_per_epoch=10)
  callback.on_epoch_begin(0)
  now[0] += 5.0  # 10 steps of 8 images in 5 s
  callback.on_epoch_end(0, {"loss": 1.23456, "accuracy": 0.5})
  assert lines == ["[stage 2/3] epoch 1/2 | loss 1.2346 | pretext acc 50.0 % | 16 img/s | "
                   "run 50 % done, ETA 15s"]  # 30 steps left at 2 steps/s
  assert run.eta() == 15.0


def _summary(heldout=(0.9, 0.6, 0.13), losses=((0.7, 0.5), (1.3, 1.1), (2.0, 2.2))):
  stages = []
  for k, (acc, loss) in enumerate(zip(heldout, losses), start=1):
    stages.append({"stage": k, "blocks": [k, k + 2], "level": k, "steps": 150,
                   "final_loss": loss[-1], "pretext_accuracy": 0.91234, "epoch_losses": list(loss),
                   "chance": 1 / 2 ** k, "heldout_pretext_accuracy": acc, "heldout_images": 200,
                   "images_per_second": 812.345, "wall_time_s": 65.2})
  return {"task": "rotation", "mode": "psl", "dataset": "demo", "backbone": "cifar_resnet",
          "image_size": 32, "batch_size": 64, "stages": stages}


def test_summary_table_is_rounded_and_names_next_commands():
  text = progress.summary_table(_summary(), "runs/x", exported="runs/x/export")
  lines = text.splitlines()
  assert lines[0].startswith("== summary: rotation psl on demo")
  assert lines[3].split() == ["1", "B1-B3", "1", "150", "0.500", "91.2", "%", "90.0", "%",
                              "50.0", "%", "812", "1m05s"]
  assert "0.91234" not in text and "812.345" not in text
  assert "python -m psl_tf.evaluate --workdir=runs/x" in text
  assert "python -m psl_tf.export --workdir=runs/x" in text
  assert "work directory: runs/x" in text and "SavedModel: runs/x/export" in text


def test_summary_warns_at_chance_and_when_loss_rose():
  warnings = [l for l in progress.summary_table(_summary(), "w").splitlines()
              if l.startswith("WARNING")]
  # Stage 3: 13 % held-out on 8 angles (chance 12.5 %) and its loss went 2.0 -> 2.2.
  assert len(warnings) == 2
  assert all("stage 3" in w for w in warnings)
  assert "near chance (12.5 %; below 18.8 %)" in warnings[0] and "loss rose" in warnings[1]
  clean = progress.summary_table(_summary(heldout=(0.9, 0.6, 0.4),
                                          losses=((0.7, 0.5), (1.3, 1.1), (2.0, 1.9))), "w")
  assert "WARNING" not in clean


def test_near_chance_is_judged_by_multiple_and_by_gap():
  # Two angles: 70 % is 40 % of the way from chance to perfect (a CIFAR-10 PSL stage 1), 52 %
  # is not; 1.5x chance alone would have called 70 % "near chance".
  assert not progress.stage_warnings({"stage": 1, "chance": 0.5, "heldout_pretext_accuracy": 0.698})
  assert progress.stage_warnings({"stage": 1, "chance": 0.5, "heldout_pretext_accuracy": 0.52})
  # Many candidates: 1.5 % against 0.19 % (MoCo's demo stage 3) has learnt, 0.25 % has not.
  assert not progress.stage_warnings({"stage": 3, "chance": 0.0019, "pretext_accuracy": 0.015})
  assert progress.stage_warnings({"stage": 3, "chance": 0.0019, "pretext_accuracy": 0.0025})
  assert progress.near_chance_threshold(0.125) == pytest.approx(0.1875)
  assert progress.near_chance_threshold(0.5) == pytest.approx(0.55)


def test_training_accuracy_is_judged_without_a_heldout_split():
  stage = {"stage": 1, "chance": 0.5, "pretext_accuracy": 0.53, "heldout_pretext_accuracy": None}
  assert "training pretext accuracy" in progress.stage_warnings(stage)[0]


def test_percent_keeps_small_chances_readable():
  assert progress.percent(0.853) == "85.3 %" and progress.percent(0.0) == "0.0 %"
  assert progress.percent(1 / 2000) == "0.05 %" and progress.percent(1 / 65537) == "0.0015 %"
  assert progress.percent(None) == "–"
