"""Running an experiment's rows: pre-training, probing and storing each run, resumably.

For one experiment, pre-trains every requested row and seed with a small `cifar_resnet`, each
as its own `python -m psl_tf.train` process, probes its frozen blocks B1..B5 with linear
classifiers (`python -m psl_tf.evaluate --protocol=linear`) and keeps the small result files of
every finished run in `<results>/<task>/<run name>/` (`record.json`, `summary.json`,
`probes.json`; never weights), so a campaign spread over several sessions resumes from what is
stored: a run whose record is there (and ran the experiment's config: its run id) is never run
again, a run interrupted mid-training resumes from its work directory under `root`.
`Campaign` holds every choice explicitly; `scripts/reproduce.py` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Callable

from psl_tf.experiments import base
from psl_tf.experiments import costs
from psl_tf.experiments import records as records_lib
from psl_tf.experiments import tables
from psl_tf.experiments.base import (ARCH, BLOCKS, FINETUNE_FLAGS, FINETUNE_FRACTIONS, RANDOM,
                                     ROWS, SETTINGS, STAGES_PER_MODE, Experiment,
                                     probe_settings)

# The checkout the child processes run from (its code, its git history).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Campaign:
  """One experiment to run (or tabulate): where its data, work directories and stored results
  are, its budget (`preset` and the `SETTINGS`), and which extra protocols score it."""
  experiment: Experiment
  preset: str
  root: str
  results: str
  depth: int
  width: int
  image_size: int
  batch_size: int
  stage_epochs: int
  steps_per_epoch: int
  probe_epochs: int
  probe_batch_size: int
  probe_learning_rate: float
  probe_inputs: str
  probe_steps: int | None = None
  probe_weight_decays: str | None = None
  data: str | None = None
  knn: bool = False
  finetune: bool = False
  reprobe_before: str | None = None
  base_experiment: Experiment | None = None
  count_flops: Callable[[int, int, int], list[int]] = costs.cifar_resnet_flops
  _ids: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def task(self) -> str:
    return self.experiment.task

  @property
  def tag(self) -> str:
    return self.experiment.label

  @property
  def settings(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in SETTINGS}

  def flops(self) -> list[int]:
    """Block FLOPs of the backbone, counted once and kept in `<results>/flops.json`."""
    return costs.stored_block_flops(self.results, self.depth, self.width, self.image_size,
                                    count=self.count_flops)


def campaign_of(experiment: Experiment, preset: str, root: str, results: str,
                settings: dict[str, Any], **kwargs: Any) -> Campaign:
  """A Campaign of `experiment` with the run `settings` (`base.resolve_settings`)."""
  values: dict[str, Any] = {k: settings.get(k) for k in SETTINGS}
  return Campaign(experiment=experiment, preset=preset, root=root, results=results,
                  **values, **kwargs)


def run_name(campaign: Campaign, row: str, seed: int) -> str:
  return base.run_name(campaign.experiment, row, seed, campaign.preset, campaign.settings)


def run_dir(campaign: Campaign, row: str, seed: int) -> str:
  return os.path.join(campaign.root, campaign.task, run_name(campaign, row, seed))


def stored_dir(campaign: Campaign, row: str, seed: int) -> str:
  return os.path.join(campaign.results, campaign.task, run_name(campaign, row, seed))


def epochs_of(campaign: Campaign, row: str) -> int:
  """Epochs per stage of a row (one number: every stage of the row trains that long)."""
  return base.row_epochs(campaign.experiment, row, campaign.settings, campaign.flops)


def stage_epochs(campaign: Campaign, row: str) -> list[int]:
  """Epochs of each stage of a row: the row's rule, unless its flags give `--epochs=a,b,c`."""
  return base.stage_epochs(campaign.experiment, row, campaign.settings, campaign.flops)


def training_tflops(campaign: Campaign, row: str, epochs: int | list[int]) -> float:
  """Training compute of one run in TFLOPs; `epochs` is one number, or one per stage."""
  return costs.training_tflops(ROWS[row][0], campaign.flops(), epochs,
                               campaign.steps_per_epoch * campaign.batch_size)


def expected_run_id(campaign: Campaign, row: str) -> str:
  """The run id of `row` of the campaign's experiment (its config's hash)."""
  if row not in campaign._ids:  # pylint: disable=protected-access
    campaign._ids[row] = base.expected_run_id(  # pylint: disable=protected-access
        campaign.experiment, row, campaign.settings, campaign.flops)
  return campaign._ids[row]  # pylint: disable=protected-access


def train_command(campaign: Campaign, row: str, seed: int) -> list[str]:
  if campaign.data is None:
    raise ValueError("running needs the data folder")
  return [sys.executable, "-m", "psl_tf.train",
          *base.train_flags(campaign.experiment, row, seed, os.path.abspath(campaign.data),
                            run_dir(campaign, row, seed), campaign.settings, campaign.flops)]


def probe_flags(settings: Any, seed: int) -> list[str]:
  """The psl_tf.evaluate flags of the campaign's linear probes for a run of `seed`;
  `settings` has the PROBE_SETTINGS as attributes (a `Campaign`, or a preset's as a namespace:
  scripts/transfer.py probes other data with them)."""
  flags = [f"--probe_inputs={settings.probe_inputs}", "--precision=float32",
           f"--epochs={settings.probe_epochs}", f"--batch_size={settings.probe_batch_size}",
           f"--learning_rate={settings.probe_learning_rate}", f"--seed={seed}"]
  if settings.probe_steps:
    flags.append(f"--steps_per_epoch={settings.probe_steps}")
  if settings.probe_weight_decays:
    flags += [f"--probe_weight_decays={settings.probe_weight_decays}",
              "--probe_val_fraction=0.1"]
  return flags


def eval_command(campaign: Campaign, row: str, seed: int) -> list[str]:
  workdir = run_dir(campaign, row, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
          "--protocol=linear", *probe_flags(campaign, seed),
          f"--output={os.path.join(workdir, 'eval')}"]


def knn_command(campaign: Campaign, row: str, seed: int) -> list[str]:
  """Weighted kNN (k=200, T=0.07, globally pooled features of B1..B5; InstDisc's protocol)."""
  workdir = run_dir(campaign, row, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}", "--protocol=knn",
          "--precision=float32", f"--batch_size={campaign.probe_batch_size}", f"--seed={seed}",
          f"--output={os.path.join(workdir, 'eval_knn')}"]


def finetune_command(campaign: Campaign, row: str, seed: int) -> list[str]:
  """Fine-tuning on 1 % and 10 % of the labels, the subsets chosen by the run's seed."""
  workdir = run_dir(campaign, row, seed)
  return [sys.executable, "-m", "psl_tf.evaluate", f"--workdir={workdir}",
          "--protocol=finetune", "--precision=float32",
          f"--label_fractions={','.join(FINETUNE_FRACTIONS)}", *FINETUNE_FLAGS,
          f"--seed={seed}", f"--output={os.path.join(workdir, 'eval_finetune')}"]


def _find_eval_json(workdir: str, row: str, protocol: str) -> str | None:
  """The run's own `protocol` JSON from psl_tf.evaluate, if it has one."""
  eval_dir = os.path.join(workdir, "eval")
  if not os.path.isdir(eval_dir):
    return None
  suffix = f"_stage{STAGES_PER_MODE[ROWS[row][0]]}.json"
  hits = sorted(n for n in os.listdir(eval_dir)
                if n.startswith(protocol + "_") and n.endswith(suffix))
  return os.path.join(eval_dir, hits[-1]) if hits else None


def _finished(workdir: str, row: str) -> bool:
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  return len(wd.finished_stages(workdir)) >= STAGES_PER_MODE[ROWS[row][0]]


def _run(cmd: list[str], log_path: str) -> float:
  """Runs `cmd` from the repository root, appending its output to `log_path`; returns s."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start = time.time()
  with open(log_path, "a") as log:
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    result = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            check=False)
  if result.returncode:
    raise RuntimeError(f"command failed (exit {result.returncode}), see {log_path}: "
                       f"{shlex.join(cmd)}")
  return time.time() - start


_PROCESSES = "training_processes.txt"
_LOG = "reproduce.log"


def _own_file(workdir: str, name: str) -> str:
  """Where the runner keeps its file `name` of the run in `workdir`: inside it once it is a
  psl_tf run (its flags.txt), else beside it (`<workdir>.<name>`): psl_tf.train refuses to
  start in a folder holding files that are not a run's."""
  if os.path.exists(os.path.join(workdir, "flags.txt")):
    return os.path.join(workdir, name)
  return workdir.rstrip(os.sep) + "." + name


def _note_training_process(workdir: str) -> None:
  """Appends the running code's commit to the run's list of training processes: a run
  resumed across sessions (or kills) is trained by every commit on that list."""
  with open(_own_file(workdir, _PROCESSES), "a") as f:
    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {code_version()}\n")


def _training_code_versions(workdir: str) -> list[str]:
  """The commits that pre-trained the run in `workdir`, in order, each once (the first launch
  noted beside the work directory, the later ones inside it)."""
  versions = []
  for path in (workdir.rstrip(os.sep) + "." + _PROCESSES, os.path.join(workdir, _PROCESSES)):
    if os.path.exists(path):
      with open(path) as f:
        versions += [line.split()[1] for line in f if len(line.split()) == 2]
  return list(dict.fromkeys(versions))


def _find_probe_json(campaign: Campaign, workdir: str, row: str) -> str | None:
  """The run's own linear-probe JSON from psl_tf.evaluate (its name holds the data path), if
  it was probed the way `campaign` asks."""
  eval_dir = os.path.join(workdir, "eval")
  if not os.path.isdir(eval_dir):
    return None
  suffix = f"_stage{STAGES_PER_MODE[ROWS[row][0]]}.json"
  hits = sorted(n for n in os.listdir(eval_dir) if n.startswith("linear_") and n.endswith(suffix))
  if not hits:
    return None
  path = os.path.join(eval_dir, hits[-1])
  with open(path) as f:
    got = json.load(f).get("settings", {})
  decays = ",".join(f"{d:g}" for d in got.get("probe_weight_decays", []))
  want = ",".join(f"{float(d):g}" for d in (campaign.probe_weight_decays or "").split(",") if d)
  same = (got.get("epochs") == campaign.probe_epochs and got.get("batch_size") ==
          campaign.probe_batch_size and got.get("learning_rate") == campaign.probe_learning_rate and
          got.get("probe_inputs") == campaign.probe_inputs and decays == want)
  return path if same else None


def write_random_run(campaign: Campaign, seed: int) -> None:
  """A work directory holding the untrained backbone of `seed` as its finished stage 1.

  pretrain.run seeds Keras with the run's seed right before building the backbone, so this is
  bit for bit the initialisation the seed's pre-training runs start from.
  """
  import keras  # pylint: disable=g-import-not-at-top  (TensorFlow only where needed)
  from psl_tf import models  # pylint: disable=g-import-not-at-top
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  workdir = run_dir(campaign, RANDOM, seed)
  if campaign.data is None:
    raise ValueError("running needs the data folder")
  keras.utils.set_random_seed(seed)
  backbone = models.build_backbone("cifar_resnet", depth=campaign.depth, width=campaign.width)
  wd.write_flags(workdir, {"task": campaign.task, "mode": "e2e", "backbone": "cifar_resnet",
                           "depth": campaign.depth, "width": campaign.width,
                           "image_size": campaign.image_size, "image_check": "none",
                           "dataset": f"folder:{os.path.abspath(campaign.data)}", "seed": seed,
                           "workdir": workdir})
  wd.write_summary(workdir, {"mode": RANDOM, "stages": [
      {"stage": 1, "wall_time_s": 0.0, "pretext_accuracy": None}]})
  wd.save_backbone_weights(backbone, wd.stage_weights_path(workdir, 1))


def _git(*cmd: str) -> subprocess.CompletedProcess[str]:
  """`git cmd` in the repository (completed process; never raises on a git error)."""
  return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)


def code_version() -> str:
  """The commit of the code that runs (with '+' when the checkout has local changes)."""
  commit = _git("rev-parse", "HEAD").stdout.strip()
  if not commit:
    return "unknown"
  dirty = _git("status", "--porcelain", "--untracked-files=no").stdout.strip()
  return commit + ("+" if dirty else "")


def probed_before(record: dict[str, Any], commit: str) -> bool:
  """True if the record's probes were made by code older than `commit` (a strict ancestor;
  a record without `probe_code_version` was probed by the commit that pre-trained it)."""
  version = (record.get("probe_code_version") or record.get("code_version") or "").rstrip("+")
  if not version or version.startswith("unknown"):
    return True
  full = _git("rev-parse", "--verify", "--quiet", commit + "^{commit}").stdout.strip()
  if not full:
    raise ValueError(f"--reprobe_before={commit} is not a commit of this repository")
  if _git("rev-parse", version).stdout.strip() == full:
    return False
  return _git("merge-base", "--is-ancestor", version, full).returncode == 0


def _stored_record(campaign: Campaign, row: str, seed: int) -> dict[str, Any] | None:
  """The record stored under the run's label, or None; RecordMismatch (naming it) when it ran
  another config than the experiment's row."""
  path = os.path.join(stored_dir(campaign, row, seed), "record.json")
  if not os.path.exists(path):
    return None
  record = records_lib.read(path)
  records_lib.check(path, record, campaign.experiment, lambda r: expected_run_id(campaign, r))
  return record


def read_record(campaign: Campaign, row: str, seed: int) -> dict[str, Any] | None:
  """The stored record of a finished run probed the way `campaign` asks, or None."""
  record = _stored_record(campaign, row, seed)
  if record is None or not _probes_still_valid(campaign, record):
    return None
  if campaign.knn and not record.get("knn"):
    return None
  if campaign.finetune and not record.get("finetune"):
    return None
  return record


def _probes_still_valid(campaign: Campaign, kept: dict[str, Any] | None) -> bool:
  """True if the stored record `kept` holds linear probes made the way `campaign` asks (same
  probe settings, and not older than `--reprobe_before`)."""
  return bool(kept and kept.get("probes") and
              probe_settings(kept["settings"]) == probe_settings(campaign.settings) and
              not (campaign.reprobe_before and probed_before(kept, campaign.reprobe_before)))


def run_one(campaign: Campaign, row: str, seed: int, log: Callable[[str], Any] = print
            ) -> dict[str, Any]:
  """Pre-trains (or resumes) and probes one run, stores its small files; returns its record.

  A run whose record is already stored is not run again.
  """
  stored = read_record(campaign, row, seed)
  if stored is not None:
    log(f"-- {run_name(campaign, row, seed)}: stored in {stored_dir(campaign, row, seed)}, skipped")
    return stored
  workdir = run_dir(campaign, row, seed)
  kept = _stored_record(campaign, row, seed)
  if (row != RANDOM and kept and kept.get("probes") and campaign.reprobe_before and
      probe_settings(kept["settings"]) == probe_settings(campaign.settings) and
      not _finished(workdir, row)):
    log(f"-- {run_name(campaign, row, seed)}: its weights are not in {workdir}, so it cannot be "
        "probed again; its stored probes are kept")
    return kept
  os.makedirs(workdir, exist_ok=True)
  epochs = [0] if row == RANDOM else stage_epochs(campaign, row)
  record: dict[str, Any] = {
            "row": row, "mode": ROWS[row][0] or RANDOM, "protocol": ROWS[row][1],
            "seed": seed, "task": campaign.task, "tag": "" if row == RANDOM else campaign.tag,
            # What it runs: its config's hash (the label above is only its directory's name).
            "run_id": expected_run_id(campaign, row),
            **({} if row == RANDOM else {"experiment": campaign.experiment.name}),
            "preset": campaign.preset,
            "code_version": code_version(),
            "settings": campaign.settings,
            # One number when every stage trains as long, else one per stage ("3,5,7").
            "epochs_per_stage": (epochs[0] if len(set(epochs)) == 1
                                 else ",".join(map(str, epochs))),
            "train_command": ("(untrained initialisation)" if row == RANDOM
                              else shlex.join(train_command(campaign, row, seed))),
            "eval_command": shlex.join(eval_command(campaign, row, seed)),
            "training_tflops": training_tflops(campaign, row, epochs),
            # TensorFlow's oneDNN kernels as the child processes get them (the environment's
            # setting; the campaign script sets it).
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)")}
  trained_now = False
  if row == RANDOM:
    if not _finished(workdir, row):
      write_random_run(campaign, seed)
  elif not _finished(workdir, row):
    if kept is not None:
      log(f"-- {run_name(campaign, row, seed)} is stored with other probe settings, but its "
          f"weights are not in {workdir}: pre-training it again")
    log(f"-- pre-training {campaign.task} {row} seed {seed} ({workdir})")
    _note_training_process(workdir)
    record["train_process_s"] = round(_run(train_command(campaign, row, seed),
                                             _own_file(workdir, _LOG)), 1)
    trained_now = True
  probe_json = None
  if _probes_still_valid(campaign, kept) and not trained_now:
    # Stored with the probes the campaign asks for and only another protocol missing (kNN,
    # fine-tuning): the stored record, its probes and their history stay as they are.
    assert kept is not None
    log(f"-- {run_name(campaign, row, seed)}: stored probes kept")
    record = {**record, **kept}
  else:
    if kept is not None and not trained_now:
      # Pre-trained earlier, probed again (other probe settings, or older probe code): keep
      # the commit and the time of its pre-training; `probe_code_version` says what probed it.
      record["code_version"] = kept.get("code_version", "unknown (not recorded)")
      for key in ("train_code_versions", "train_process_s"):
        if key in kept:
          record[key] = kept[key]
      if kept.get("probes"):  # what the probes it replaces said, for the report
        record["previous_probes"] = {
            "probe_code_version": kept.get("probe_code_version") or kept.get("code_version"),
            "settings": probe_settings(kept["settings"]),
            "top1": {b: v.get("top1") for b, v in kept["probes"].items()}}
    probe_json = _find_probe_json(campaign, workdir, row)
    if probe_json is not None and campaign.reprobe_before and kept is not None and probed_before(
        kept, campaign.reprobe_before):
      probe_json = None  # the work directory's probes are the old code's
    if probe_json is None:
      log(f"-- linear probes for {row} seed {seed}")
      record["probe_code_version"] = code_version()
      record["probe_process_s"] = round(_run(eval_command(campaign, row, seed),
                                               _own_file(workdir, _LOG)), 1)
      probe_json = _find_probe_json(campaign, workdir, row)
      if probe_json is None:
        raise RuntimeError(f"psl_tf.evaluate left no probe results in {workdir}/eval")
    with open(probe_json) as f:
      probes = json.load(f)
    record["probes"] = {b: v for b, v in probes["results"].items() if b in BLOCKS}
  versions = _training_code_versions(workdir)
  if versions:
    record["train_code_versions"] = versions
  extra_protocols = [("knn", knn_command)] if campaign.knn else []
  if campaign.finetune:  # the untrained network too: training from scratch
    extra_protocols.append(("finetune", finetune_command))
  for protocol, command in extra_protocols:
    if record.get(protocol):  # kept from the stored record
      continue
    found = _find_eval_json(workdir, row, protocol)
    if found is None:
      log(f"-- {protocol} for {row} seed {seed}")
      record[f"{protocol}_process_s"] = round(_run(command(campaign, row, seed),
                                                       _own_file(workdir, _LOG)), 1)
      found = _find_eval_json(workdir, row, protocol)
      if found is None:
        raise RuntimeError(f"psl_tf.evaluate left no {protocol} results in {workdir}/eval")
    with open(found) as f:
      results = json.load(f)["results"]
    record[protocol] = ({b: v for b, v in results.items() if b in BLOCKS}
                        if protocol == "knn" else results)
    record[f"{protocol}_command"] = shlex.join(command(campaign, row, seed))
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  stages = summary["stages"]
  # Training time inside fit (the stages' own clocks); the process time adds start-up.
  record["train_wall_s"] = round(sum(s.get("wall_time_s") or 0 for s in stages), 1)
  record["stage_pretext_accuracy"] = [s.get("pretext_accuracy") for s in stages]
  record["stage_heldout_accuracy"] = [s.get("heldout_pretext_accuracy") for s in stages]
  record["pretext_accuracy"] = stages[-1].get("pretext_accuracy")
  record["heldout_accuracy"] = stages[-1].get("heldout_pretext_accuracy")
  out = stored_dir(campaign, row, seed)
  os.makedirs(out, exist_ok=True)
  shutil.copy(os.path.join(workdir, "summary.json"), os.path.join(out, "summary.json"))
  if probe_json is not None:  # else the stored probes.json is the record's
    shutil.copy(probe_json, os.path.join(out, "probes.json"))
  with open(os.path.join(out, "record.json"), "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  log(f"-- {run_name(campaign, row, seed)} stored in {out}")
  return record


def write_tables(campaign: Campaign, records: list[dict[str, Any]] | None = None) -> str:
  """Writes results<tag>.md/.json/.png under <results>/<task>/ from the stored records, each
  checked against the experiment's config; returns the Markdown."""
  probes = probe_settings(campaign.settings)
  arch = {k: getattr(campaign, k) for k in ARCH}
  if records is None:
    records = records_lib.load_records(campaign.results, campaign.experiment, probes, arch,
                                       lambda row: expected_run_id(campaign, row))
  other = campaign.base_experiment
  base_records = None
  if campaign.tag:
    other = other or Experiment(campaign.task, campaign.task)
    against = dataclasses.replace(campaign, experiment=other, _ids={})
    base_records = records_lib.load_records(campaign.results, other, probes, arch,
                                            lambda row: expected_run_id(against, row))
  return tables.write(os.path.join(campaign.results, campaign.task), campaign.task, records,
                      base_records, tag=campaign.tag, extra=campaign.experiment.extra,
                      base_tag=other.label if other else "",
                      base_extra=other.extra if other else [], preset=campaign.preset,
                      settings=campaign.settings)


def run(campaign: Campaign, rows: list[str], seeds: list[int], random_baseline: bool = True,
        log: Callable[[str], Any] = print) -> None:
  """Runs (or finds stored) every row of `rows` and seed of `seeds`, seed-major (a partial
  campaign still has every row of its first seed), with the untrained floor of each seed."""
  os.makedirs(os.path.join(campaign.root, campaign.task), exist_ok=True)
  for seed in seeds:
    for row in rows + ([RANDOM] if random_baseline else []):
      run_one(campaign, row, seed, log=log)
