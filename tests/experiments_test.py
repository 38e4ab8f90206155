"""psl_tf.experiments: a run's identity comes from its config, every stored record of the
CIFAR-10 campaign is a row of one of its experiments, old records migrate, and the tables
rebuilt from the records through the experiments are the stored ones."""

import glob
import json
import os
import shutil

import pytest

from psl_tf.experiments import base
from psl_tf.experiments import cifar10
from psl_tf.experiments import costs
from psl_tf.experiments import records
from psl_tf.experiments import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results", "cifar10")
FLOPS = [1, 4, 3, 3, 3]


def _config(experiment, row="psl", seed=0, data="/tmp/cifar10", workdir="/runs/x"):
  settings = base.resolve_settings("cifar10", experiment)
  return base.config_of(experiment, row, seed, data, workdir, settings, lambda: FLOPS)


def test_run_id_is_the_config_not_its_place():
  rotation = cifar10.get("rotation")
  first = base.run_id(_config(rotation))
  assert len(first) == 12 and int(first, 16) >= 0
  assert base.run_id(_config(rotation)) == first  # stable
  # Neither the work directory, the seed nor where the images are unpacked is the identity.
  assert base.run_id(_config(rotation, seed=3, data="/data/c10", workdir="/w/y")) == first
  # Any learning flag is: a changed override, another row, another task.
  grid = base.Experiment("g", "rotation", {"head_grid": 4})
  assert base.run_id(_config(grid)) != first
  assert base.run_id(_config(base.Experiment("g", "rotation", {"head_grid": 2}))) not in (
      first, base.run_id(_config(grid)))
  assert base.run_id(_config(rotation, row="sl")) != first
  assert base.run_id(_config(cifar10.get("jigsaw"))) != first
  # The rows of a pair keep their own overrides: one schedule for psl, not for e2e_at_psl.
  semi = cifar10.get("rotation_semisup")
  assert _config(semi).lr_restart is False and _config(semi, row="e2e_at_psl").lr_restart
  # The same config under two labels is the same run (semisup psl retrains the winning recipe).
  assert base.run_id(_config(semi)) == base.run_id(
      _config(cifar10.get("rotation_headgrid4_lrrestartfalse_lrschedulecosine")))


def test_labels_are_the_campaigns_directory_names():
  s = base.resolve_settings("cifar10")
  name = lambda e, row, seed: base.run_name(cifar10.get(e), row, seed, "cifar10",
                                             base.resolve_settings("cifar10", cifar10.get(e)))
  assert name("rotation_headgrid4_lrrestartfalse_lrschedulecosine", "psl", 0) == (
      "psl_headgrid4_lrrestartfalse_lrschedulecosine_s0")
  assert name("rotation_semisup", "e2e_at_psl", 2) == "e2e_at_psl_semisup_s2"
  assert name("rotation_w32", "random", 1) == "random_d10_w32_32px_s1"
  assert name("rotation_headgrid4", "random", 1) == "random_s1"
  assert base.arch_suffix("cifar10", s) == ""
  with pytest.raises(ValueError, match="unknown row"):
    base.Row("bogus")


def test_costs_weigh_frozen_blocks_once_and_trained_ones_three_times():
  assert costs.stage_costs("psl", FLOPS) == [24, 31, 32]
  assert costs.stage_costs("e2e", FLOPS) == [42]
  assert costs.epochs_of("e2e", "matched_equal", 5, lambda: FLOPS) == round(87 * 5 / 42)
  assert costs.epochs_of("psl", "paper", 5, lambda: FLOPS) == 15
  assert costs.per_stage_epochs(5, 3, "3,5,7") == [3, 5, 7]
  assert costs.training_tflops("psl", FLOPS, [3, 5, 7], 10) == pytest.approx(
      (24 * 3 + 31 * 5 + 32 * 7) * 10 / 1e12)
  assert costs.training_tflops(None, FLOPS, 5, 10) == 0.0


def _expected(experiment, row, settings=None):
  """The run id of `row` of `experiment`, under its own settings unless `settings` are given
  (a base experiment read for a variant's table: the variant's backbone, as the runner does)."""
  settings = settings or base.resolve_settings("cifar10", experiment)
  return base.expected_run_id(experiment, row, settings, lambda: costs.stored_block_flops(
      RESULTS, settings["depth"], settings["width"], settings["image_size"],
      count=lambda *a: pytest.fail("flops.json lacks the campaign's backbone")))


def test_every_stored_record_is_a_row_of_an_experiment():
  paths = sorted(glob.glob(os.path.join(RESULTS, "*", "*", "record.json")))
  assert len(paths) > 50
  done = records.migrate(RESULTS, cifar10.EXPERIMENTS, _expected, write=False)
  assert [p for p, _ in done] == paths
  for path in paths:
    experiment, row, seed = records.locate(path, cifar10.EXPERIMENTS)
    record = records.read(path)
    assert (record["row"], record["seed"], record["tag"] if row != base.RANDOM else "") == (
        row, seed, experiment.label if row != base.RANDOM else "")


def test_migration_is_idempotent_and_a_mismatch_names_the_record(tmp_path):
  results = tmp_path / "cifar10"
  shutil.copytree(os.path.join(RESULTS, "rotation", "psl_headgrid4_s0"),
                  results / "rotation" / "psl_headgrid4_s0")
  shutil.copytree(os.path.join(RESULTS, "rotation", "random_s0"),
                  results / "rotation" / "random_s0")
  shutil.copy(os.path.join(RESULTS, "flops.json"), results / "flops.json")
  # The records as the code before run ids wrote them (the stored ones are migrated).
  for label in ("psl_headgrid4_s0", "random_s0"):
    record_path = results / "rotation" / label / "record.json"
    old = json.loads(record_path.read_text())
    old.pop("run_id"), old.pop("experiment", None)
    record_path.write_text(json.dumps(old))
  path = results / "rotation" / "psl_headgrid4_s0" / "record.json"
  before = json.loads(path.read_text())
  grid = cifar10.get("rotation_headgrid4")
  # Un-migrated, it loads checked against its experiment's config.
  loaded = records.load_records(str(results), grid, expected=lambda r: _expected(grid, r))
  assert sorted(r["row"] for r in loaded) == ["psl", "random"]
  assert records.migrate(str(results), cifar10.EXPERIMENTS, _expected) == [
      (str(path), "migrated"), (str(results / "rotation" / "random_s0" / "record.json"),
                                "migrated")]
  after = json.loads(path.read_text())
  assert after == {**before, "run_id": _expected(grid, "psl"), "experiment": grid.name}
  assert {s for _, s in records.migrate(str(results), cifar10.EXPERIMENTS, _expected)} == {
      "current"}
  assert json.loads(path.read_text()) == after
  # A record under the label whose flags say otherwise is an error, never merged.
  changed = dict(before, train_command=before["train_command"].replace("--head_grid=4",
                                                                       "--head_grid=2"))
  path.write_text(json.dumps(changed))
  with pytest.raises(records.RecordMismatch, match="psl_headgrid4_s0/record.json"):
    records.load_records(str(results), grid, expected=lambda r: _expected(grid, r))
  with pytest.raises(records.RecordMismatch, match="psl_headgrid4_s0/record.json"):
    records.migrate(str(results), cifar10.EXPERIMENTS, _expected)


def _current(stored_json, table):
  """True if the stored table was built from the records as they are now (same seeds and
  per-seed values of every row); a table older than a re-probed record is not."""
  old = stored_json["table"]
  return set(old) == set(table) and all(
      old[row]["seeds"] == table[row]["seeds"] and old[row]["values"] == table[row]["values"]
      for row in table)


@pytest.mark.parametrize("name", sorted(cifar10.BY_NAME))
def test_tables_rebuilt_through_the_experiments_are_the_stored_ones(name):
  experiment = cifar10.get(name)
  stem = os.path.join(RESULTS, experiment.task, f"results{experiment.label}")
  if not os.path.exists(stem + ".md"):
    pytest.skip(f"{name} has no stored table yet")
  settings = base.resolve_settings("cifar10", experiment)
  probes = base.probe_settings(settings)
  arch = {k: settings[k] for k in base.ARCH}
  found = records.load_records(RESULTS, experiment, probes, arch,
                               lambda r: _expected(experiment, r), log=lambda _: None)
  other = cifar10.base_of(experiment) if experiment.label else None
  base_records = None
  if experiment.label:
    base_records = records.load_records(RESULTS, other, probes, arch,
                                        lambda r: _expected(other, r, settings),
                                        log=lambda _: None)
  table = records.aggregate(found)
  with open(stem + ".json") as f:
    stored_json = json.load(f)
  if not _current(stored_json, table):
    pytest.skip(f"{stem}.json predates a record it shows (reproduce.py --phase=table "
                "refreshes it)")
  text = tables.markdown(experiment.task, found, table,
                         None if base_records is None else records.aggregate(base_records),
                         tag=experiment.label, extra=experiment.extra,
                         base_tag=other.label if other else "",
                         base_extra=other.extra if other else [], preset="cifar10",
                         settings=settings)
  with open(stem + ".md") as f:
    assert text == f.read()
  assert json.loads(json.dumps(table)) == stored_json["table"]


def test_the_campaign_script_names_only_experiments_and_they_run_as_before():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "reproduce", os.path.join(ROOT, "scripts", "reproduce.py"))
  reproduce = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reproduce)
  with open(os.path.join(ROOT, "scripts", "campaign_cifar10.sh")) as f:
    script = f.read()
  assert "--extra" not in script and "--tag" not in script
  names = set(re.findall(r"--experiment=([\w$]+)", script))
  names = {n for n in names if "$" not in n}
  assert names and names <= set(cifar10.BY_NAME)
  # The default task experiments the loops name through $task.
  assert {"rotation", "jigsaw", "simclr", "mocov2"} <= set(cifar10.BY_NAME)
  # An experiment gives what `--extra` flags gave: the same label, command and base.
  args = reproduce.parse_args(["--phase=table", "--preset=cifar10", "--results=/nowhere",
                               "--experiment=rotation_headgrid4_lrrestartfalse"])
  assert (args.task, args.tag, args.base_tag, args.rows, args.seeds) == (
      "rotation", "_headgrid4_lrrestartfalse", "_headgrid4", ["psl"], [0, 1, 2, 3])
  assert args.extra == ["--head_grid=4", "--lr_restart=false"]
  semi = reproduce.parse_args(["--phase=table", "--preset=cifar10",
                               "--experiment=rotation_semisup"])
  # Compared with the stored runs of the same recipe (one cosine schedule, grid heads).
  assert (semi.finetune and not semi.knn and
          semi.base_tag == "_headgrid4_lrrestartfalse_lrschedulecosine")
  w32 = reproduce.parse_args(["--phase=table", "--preset=cifar10", "--experiment=rotation_w32"])
  assert w32.width == 32 and reproduce.run_name(w32, "random", 0) == "random_d10_w32_32px_s0"
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--phase=table", "--experiment=rotation", "--extra=--head_grid=4"])


def test_the_answer_names_experiments_of_the_campaign():
  from psl_tf.experiments import answer  # pylint: disable=g-import-not-at-top
  variants = {line[0] for line in answer.LINES} | {line[2] for line in answer.LINES}
  variants |= {pair[0] for line in answer.ABLATIONS for pair in line[1:]}
  for variant in variants:
    assert any(cifar10.variant_of(task, variant) for task in base.TASKS), variant


def test_p_values_never_round_onto_the_significance_threshold():
  assert records.format_p(0.0004) == "p < 0.001"
  assert records.format_p(0.0052) == "p = 0.005"
  assert records.format_p(0.0238) == "p = 0.02"
  # 0.052 is not significant and 0.048 is; two decimals would print both as 0.05.
  assert records.format_p(0.0524) == "p = 0.052"
  assert records.format_p(0.0476) == "p = 0.048"
  assert records.format_p(0.0561) == "p = 0.06"
