"""Evaluation protocols on pre-trained backbones: linear probes on B1..B5, kNN, fine-tuning,
transfer, each run of a comparison evaluated the same way (`Settings`), and the report.

The Python API (`psl_tf.evaluate`) and the command line (`python -m psl_tf.evaluate`, whose
flags are generated from `Settings`) both end in `evaluate_runs`.
"""

import contextlib
import dataclasses
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from psl_tf import optim
from psl_tf import options as options_lib
from psl_tf import guards
from psl_tf import keras_private
from psl_tf import precision
from psl_tf import progress
from psl_tf import runlock
from psl_tf.data import views
from psl_tf.evaluation import finetune as finetune_lib
from psl_tf.evaluation import knn as knn_lib
from psl_tf.evaluation import probes
from psl_tf.evaluation import report
from psl_tf.evaluation import transfer
from psl_tf.models import blocks as blocks_lib

if TYPE_CHECKING:
  from psl_tf import workdir as wd

# A row of a report: the run's label and {column (B1..B5, a label fraction): metrics}.
Row = tuple[str, dict[str, Any]]
Log = Callable[[str], object]

PROTOCOLS = ("linear", "knn", "finetune", "transfer")
PROBE_INPUTS = ("auto", "features", "images")
option = options_lib.option


@dataclasses.dataclass(frozen=True)
class Settings:
  """How runs are evaluated; every field is also a flag of `python -m psl_tf.evaluate`."""
  protocol: str = option("linear", "linear: probes on B1..B5; knn: weighted kNN on pooled "
                         "features; finetune: whole network on label subsets; transfer: linear "
                         "probes on --dataset.", choices=PROTOCOLS)
  dataset: str | None = option(None, "Evaluation data (demo, folder:PATH or a TFDS name); "
                               "default: the run's pre-training data (required for transfer).",
                               kind="str")
  data_dir: str | None = option(None, "TFDS data directory.", kind="str")
  train_split: str = option("train", "Split the probes / kNN bank / fine-tuning use.")
  eval_split: str | None = option(None, "Split to report on (default: test, or validation for "
                                  "data sets without a test split).", kind="str")
  image_size: int = option(0, "Image side (0: the run's --image_size).", range=(0, 4096))
  resize: int = option(0, "Shorter side before cropping (0: image_size * 256/224).",
                       range=(0, 4096))
  blocks: tuple = option(tuple(blocks_lib.BLOCK_NAMES), "Blocks to evaluate.", kind="str_list")
  batch_size: int = option(64, "Batch size of probes and fine-tuning.", range=(1, 65536))
  epochs: int = option(10, "Epochs of probe / fine-tuning training.", range=(1, 10**6))
  steps_per_epoch: int = option(0, "Steps per epoch (0: train images // batch_size).",
                                range=(0, 10**9))
  learning_rate: float = option(0.01, "SGD learning rate.", range=(0.0, 100.0, True))
  momentum: float = option(0.9, "SGD momentum.", range=(0.0, 1.0))
  weight_decay: float = option(5e-4, "L2 weight decay on linear / conv kernels.",
                               range=(0.0, 1.0))
  probe_weight_decays: tuple = option((), "linear/transfer on stored features: weight decays "
                                      "to choose from, per block, by accuracy on a held-out "
                                      "--probe_val_fraction of the training split (never the "
                                      "test split); the chosen heads are then trained on the "
                                      "whole training split. Empty: --weight_decay for every "
                                      "head.", kind="str_list")
  probe_val_fraction: float = option(0.1, "Share of the training split held out to choose "
                                     "among --probe_weight_decays.", range=(0.0, 1.0))
  lr_schedule: str = option("step", "Fine-tuning schedule (probes always use the step "
                            "schedule).", choices=optim.SCHEDULES)
  lr_step_split: str = option("10,10,8", "Step schedule: relative lengths of the constant "
                              "pieces (Goyal et al.: 28 epochs, drops after 10 and 20).")
  lr_decay: float = option(0.1, "Step schedule: factor between pieces.", range=(0.0, 1.0, True))
  probe_inputs: str = option("auto", "linear/transfer: train the heads on pooled features "
                             "extracted once from centre crops (features: no augmentation, "
                             "fast), on augmented images through the backbone at every step "
                             "(images), or features when they fit in --feature_memory_gb "
                             "(auto).", choices=PROBE_INPUTS)
  feature_memory_gb: float = option(8.0, "--probe_inputs=auto: most memory the stored "
                                    "features may take (float16).", range=(0.0, 10**6))
  knn_k: int = option(200, "kNN: neighbours.", range=(1, 10**6))
  knn_temperature: float = option(0.07, "kNN: temperature of the exp(s/T) vote weights.",
                                  range=(0.0, 100.0, True))
  knn_pooling: str = option("global", "kNN features: global average pool, or the probes' "
                            "~9,000-value pooling.", choices=knn_lib.POOLINGS)
  label_fractions: tuple = option(("0.01", "0.1"), "finetune: fractions of labelled images.",
                                  kind="str_list")
  label_file: str | None = option(None, "finetune: file of image ids (one per line) to use as "
                                  "the labelled subset instead of --label_fractions.",
                                  kind="str")
  precision: str = option("float32", "finetune: Keras mixed-precision policy of the "
                          "fine-tuned network (as psl_tf.train --precision).",
                          choices=precision.PRECISIONS)
  seed: int = option(0, "Seed of the subsets, shuffling, augmentation and heads.",
                     range=(0, 2**31 - 1))
  bn_recalibration_batches: int = option(
      0, "linear, transfer, knn: before evaluating, re-estimate the backbone's BatchNorm "
      "statistics on this many batches of the training split's centre crops (0: keep the "
      "pre-training statistics). For a backbone trained on other inputs than it is "
      "evaluated on, e.g. jigsaw's tiles.", range=(0, 10**6))
  verbose: int = option(1, "0: quiet; 1: a line per probe / fine-tuning epoch (a Keras "
                        "progress bar on a terminal); 2: a line per epoch.", range=(0, 2))

  def __post_init__(self) -> None:
    for field in options_lib.options_of(Settings):
      object.__setattr__(self, field.name, options_lib.coerce(field, getattr(self, field.name)))


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _default_eval_split(dataset: str) -> str:
  if dataset == "demo" or dataset.startswith("folder:"):
    return "test"
  return "validation" if dataset in ("imagenet2012", "imagenette", "places365_small") else "test"


def _steps(num_examples: int | None, batch_size: int, requested: int | None) -> int:
  if requested:
    return requested
  if not num_examples:
    raise ValueError("the size of the training split is unknown; set --steps_per_epoch")
  return max(1, num_examples // batch_size)


def _labels_without_decoding(source: Any) -> np.ndarray | None:
  """The labels of a folder or in-memory source (no image is decoded), else None."""
  if not (source.name.startswith("folder:") or source.in_memory):
    return None
  labels = source.elements.map(lambda _, label: label).batch(65536)
  return np.concatenate(list(labels.as_numpy_iterator()) or [np.zeros([0], np.int64)])


def _label_fractions(texts: Sequence[str]) -> list[float]:
  """The --label_fractions as numbers in (0, 1]; ValueError (one line) before any work."""
  try:
    fractions = [float(f) for f in texts]
  except ValueError:
    raise ValueError(f"--label_fractions takes numbers like 0.01,0.1, got "
                     f"{','.join(texts)}") from None
  bad = [t for t, f in zip(texts, fractions) if not 0.0 < f <= 1.0]
  if bad or not fractions:
    raise ValueError(f"--label_fractions must be fractions in (0, 1] (0.01 = 1 % of the "
                     f"labels), got {','.join(texts) or 'nothing'}")
  return fractions


class Evaluation:
  """The data and settings shared by every run evaluated the same way (the rows of a table)."""

  def __init__(self, primary: "wd.Run", v: Settings) -> None:
    """`primary`: the first `psl_tf.workdir.Run` (its data set is the default); `v`: the
    `Settings`."""
    config = primary.config
    self.v = v
    self.protocol = v.protocol
    if v.protocol == "transfer" and not v.dataset:
      raise ValueError("--protocol=transfer needs --dataset (the data set to transfer to)")
    self.dataset = v.dataset or config.dataset
    self.eval_split = v.eval_split or _default_eval_split(self.dataset)
    self.image_size = v.image_size or config.image_size
    self.resize = v.resize or (int(round(self.image_size * 256 / 224)) if v.image_size
                               else config.resize_to)
    unknown = [b for b in v.blocks if b not in blocks_lib.BLOCK_NAMES]
    if unknown:
      raise ValueError(f"--blocks must be among {','.join(blocks_lib.BLOCK_NAMES)}, got "
                       f"{','.join(unknown)}")
    data_dir = v.data_dir if v.data_dir is not None else (config.data_dir if not v.dataset
                                                           else None)
    self.train_source, self.multi_label = transfer.load_labelled(
        self.dataset, v.train_split, data_dir, config.image_check)
    self.eval_source, _ = transfer.load_labelled(self.dataset, self.eval_split, data_dir,
                                                 config.image_check)
    self.num_classes = self.train_source.num_classes
    if not self.num_classes or self.num_classes < 2:
      raise ValueError(f"{self.dataset} has no class labels; evaluation needs a labelled data "
                       "set (class sub-folders for folder:PATH)")
    if self.multi_label and v.protocol in ("knn", "finetune"):
      raise ValueError(f"{self.dataset} is multi-label; use --protocol=linear or transfer")
    self.key = _slug(f"{v.protocol}_{self.dataset}")
    self.probe_inputs = v.probe_inputs
    self.weight_decays = probes.parse_weight_decays(v.probe_weight_decays)
    if self.weight_decays and not 0.0 < v.probe_val_fraction < 1.0:
      raise ValueError(f"--probe_val_fraction={v.probe_val_fraction} must be between 0 and 1")
    labels = _labels_without_decoding(self.train_source)
    warning = labels is not None and guards.one_class_warning(
        labels, f"the probes' training split ({self.dataset} {v.train_split})")
    if warning:
      logging.warning(warning)
    self.fractions = _label_fractions(v.label_fractions) if (
        v.protocol == "finetune" and not v.label_file) else []
    if self.weight_decays and (v.protocol not in ("linear", "transfer")
                               or v.probe_inputs == "images"):
      raise ValueError("--probe_weight_decays chooses among linear heads trained on stored "
                       "features: it needs --protocol=linear or transfer and --probe_inputs="
                       "features or auto")

  def resolve_probe_inputs(self, backbone: keras.Model) -> str:
    """'features' or 'images' for this backbone (auto: features when they fit in memory)."""
    if self.probe_inputs != "auto":
      return self.probe_inputs
    count = (self.train_source.num_examples or 0) + (self.eval_source.num_examples or 0)
    if not count:
      return "images"
    sizes = probes.feature_sizes(backbone, self.image_size, tuple(self.v.blocks))
    gigabytes = count * sum(sizes.values()) * np.dtype(probes.FEATURE_DTYPE).itemsize / 2**30
    return "features" if gigabytes <= self.v.feature_memory_gb else "images"

  def title(self) -> str:
    text = f"{self.protocol} on {self.dataset} ({self.eval_split})"
    if self.protocol in ("linear", "transfer"):
      text += (", heads on stored centre-crop features (no augmentation)"
               if self.probe_inputs == "features" else ", heads on augmented images")
    return text

  def dataset_of(self, source: Any, training: bool) -> Any:
    return views.labelled_dataset(source, self.image_size, self.resize, self.v.batch_size,
                                  training, seed=self.v.seed)

  def settings(self) -> dict[str, Any]:
    v = self.v
    return {"protocol": self.protocol, "dataset": self.dataset, "train_split": v.train_split,
            "eval_split": self.eval_split, "image_size": self.image_size, "resize": self.resize,
            "num_classes": self.num_classes, "multi_label": self.multi_label,
            "blocks": list(v.blocks), "batch_size": v.batch_size, "epochs": v.epochs,
            "steps_per_epoch": v.steps_per_epoch, "learning_rate": v.learning_rate,
            "momentum": v.momentum, "weight_decay": v.weight_decay,
            "lr_step_split": v.lr_step_split, "lr_decay": v.lr_decay, "seed": v.seed,
            **({"probe_inputs": self.probe_inputs}
               if self.protocol in ("linear", "transfer") else {}),
            **({"probe_weight_decays": list(self.weight_decays),
                "probe_val_fraction": v.probe_val_fraction} if self.weight_decays else {}),
            **({"knn_k": v.knn_k, "knn_temperature": v.knn_temperature,
                "knn_pooling": v.knn_pooling} if self.protocol == "knn" else {}),
            **({"bn_recalibration_batches": v.bn_recalibration_batches}
               if v.bn_recalibration_batches else {}),
            **({"label_fractions": list(v.label_fractions), "label_file": v.label_file,
                "lr_schedule": v.lr_schedule} if self.protocol == "finetune" else {})}

  def _callbacks(self, label: str, steps: int) -> list[keras.callbacks.Callback]:
    """Epoch lines for a probe / fine-tuning fit (none with --verbose=0)."""
    if not self.v.verbose:
      return []
    return [progress.fit_progress(label, self.v.epochs, steps, self.v.batch_size)]

  def _fit_verbose(self) -> int:
    return progress.fit_verbose(self.v.verbose)

  def _say(self, text: str) -> None:
    if self.v.verbose:
      print(f"   {text}", flush=True)

  def run(self, run: "wd.Run") -> dict[str, Any]:
    """{column: metrics} of one run under this evaluation."""
    v = self.v
    keras.utils.set_random_seed(v.seed)
    backbone = run.build_backbone()
    if v.bn_recalibration_batches:
      if self.protocol == "finetune":
        raise ValueError("--bn_recalibration_batches applies to linear, transfer and knn "
                         "(fine-tuning trains the BatchNorm statistics itself)")
      images = self.dataset_of(self.train_source, False).map(lambda x, _: x)
      used = blocks_lib.recalibrate_batch_norm(backbone, images.take(
          v.bn_recalibration_batches))
      self._say(f"BatchNorm statistics re-estimated on {used} batches of {v.batch_size} "
                f"{self.dataset} {v.train_split} images")
    if self.protocol in ("linear", "transfer"):
      self.probe_inputs = self.resolve_probe_inputs(backbone)
      if self.weight_decays and self.probe_inputs != "features":
        raise ValueError("--probe_weight_decays chooses among heads trained on stored "
                         "features; it needs --probe_inputs=features (or auto with enough "
                         "--feature_memory_gb)")
    if self.protocol in ("linear", "transfer") and self.probe_inputs == "features":
      extract_batch = max(v.batch_size, 256)
      results, poolings = probes.linear_probe_on_features(
          backbone, views.labelled_dataset(self.train_source, self.image_size, self.resize,
                                           extract_batch, training=False),
          views.labelled_dataset(self.eval_source, self.image_size, self.resize,
                                 extract_batch, training=False),
          self.num_classes, self.image_size, v.epochs, v.batch_size, tuple(v.blocks),
          v.learning_rate, v.momentum, self.weight_decays or v.weight_decay, v.lr_step_split,
          v.lr_decay, self.multi_label, self.train_source.num_examples,
          self.eval_source.num_examples, v.seed, log=lambda line: self._say(line.lstrip()),
          val_fraction=v.probe_val_fraction)
    elif self.protocol in ("linear", "transfer"):
      steps = _steps(self.train_source.num_examples, v.batch_size, v.steps_per_epoch)
      self._say(f"training linear probes on {', '.join(v.blocks)}: {v.epochs} epochs x {steps} "
                f"steps of {v.batch_size} {self.dataset} {v.train_split} images, then scoring "
                f"the {self.eval_split} split")
      results, poolings = probes.linear_probe(
          backbone, self.dataset_of(self.train_source, True),
          self.dataset_of(self.eval_source, False), self.num_classes, self.image_size,
          v.epochs, steps, tuple(v.blocks), v.learning_rate, v.momentum, v.weight_decay,
          v.lr_step_split, v.lr_decay, self.multi_label, self._fit_verbose(),
          self._callbacks("probes", steps))
    if self.protocol in ("linear", "transfer"):
      for name, p in poolings.items():
        results[name]["pooling"] = {"kernel": p.kernel, "stride": p.stride,
                                    "padding": p.padding}
      return results
    if self.protocol == "knn":
      self._say(f"extracting features of the {v.train_split} and {self.eval_split} splits "
                f"(blocks {', '.join(v.blocks)}), then voting with k={v.knn_k}")
      return knn_lib.knn_evaluate(
          backbone, self.dataset_of(self.train_source, False),
          self.dataset_of(self.eval_source, False), self.num_classes, tuple(v.blocks),
          v.knn_k, v.knn_temperature, v.knn_pooling)
    return self._finetune(run)

  def _finetune(self, run: "wd.Run") -> dict[str, Any]:
    v = self.v
    labels, ids = finetune_lib.source_labels_and_ids(self.train_source)
    if v.label_file:
      subsets = {os.path.basename(v.label_file): finetune_lib.subset_from_ids(
          ids, finetune_lib.read_id_file(v.label_file))}
    else:
      subsets = {f"{100 * f:g}%": finetune_lib.balanced_subset(labels, f, v.seed)
                 for f in self.fractions}
    results = {}
    for column, indices in subsets.items():
      keras.utils.set_random_seed(v.seed)
      with precision.policy_scope(v.precision):  # --precision: the fine-tuned backbone's
        backbone = run.build_backbone()  # fresh weights for every subset
      warning = guards.one_class_warning(labels[indices], f"the {column} label subset")
      if warning:
        logging.warning(warning)
      subset = finetune_lib.subset_source(self.train_source, indices)
      steps = _steps(len(indices), v.batch_size, v.steps_per_epoch)
      self._say(f"fine-tuning on {column} of the labels ({len(indices)} images): {v.epochs} "
                f"epochs x {steps} steps")
      results[column] = finetune_lib.finetune(
          backbone, self.dataset_of(subset, True), self.dataset_of(self.eval_source, False),
          self.num_classes, self.image_size, v.epochs, steps, v.learning_rate, v.momentum,
          v.weight_decay, v.lr_schedule, v.lr_step_split, v.lr_decay, self._fit_verbose(),
          self._callbacks(f"fine-tune {column}", steps), precision=precision.resolve(v.precision))
      results[column]["labelled_images"] = int(len(indices))
    return results


def report_dir(the_runs: Sequence["wd.Run"], output: str | None = None) -> str:
  """Where the table and plot go: `output`, or the first run's eval/ folder."""
  return output or os.path.join(the_runs[0].workdir, "eval")


@contextlib.contextmanager
def hold_outputs(the_runs: Sequence["wd.Run"], output: str | None = None,
                 write_to_runs: bool = True) -> Iterator[None]:
  """Holds every run's work directory (each gets an eval/<...>.json; another process using
  one is refused, naming it) and checks that every place written at the end can be written,
  before any evaluation starts. Re-entrant. With `write_to_runs=False` the runs are only read:
  neither held nor written, and `output` is required."""
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  check_output(output, write_to_runs)
  with contextlib.ExitStack() as stack:
    for run in the_runs if write_to_runs else ():
      stack.enter_context(runlock.hold(run.workdir, "psl_tf.evaluate"))
      wd.check_writable_dir(os.path.join(run.workdir, "eval"), "the evaluation's results")
    wd.check_writable_dir(report_dir(the_runs, output), "the evaluation report")
    yield


def check_output(output: str | None, write_to_runs: bool) -> None:
  """ValueError unless the report has somewhere to go: without `write_to_runs` (the run
  directories left untouched) an `output` directory is required."""
  if not write_to_runs and not output:
    raise ValueError("--write_to_runs=false needs --output (the report would otherwise go to "
                     "<workdir>/eval, inside the run)")


def check_runs(the_runs: Sequence["wd.Run"], settings: Settings) -> None:
  """ValueError, before any work, if `settings` cannot evaluate one of `the_runs` here: with
  oneDNN on, fine-tuning a backbone whose weight gradient crashes it (psl_tf.guards)."""
  if settings.protocol != "finetune" or not keras_private.onednn_enabled():
    return
  for run in the_runs:
    unsafe = guards.onednn_unsafe_message(run.build_backbone(), True, fix=None)
    if unsafe:
      raise ValueError(unsafe)


def evaluate_runs(the_runs: Sequence["wd.Run"], settings: Settings, output: str | None = None,
                  log: Log | None = print, evaluation: Evaluation | None = None,
                  write_to_runs: bool = True) -> tuple[list[Row], dict[str, Any]]:
  """Evaluates every run the same way and writes the report; returns (rows, report paths).

  Args:
    the_runs: `psl_tf.workdir.Run`s; the first one's data set is the default, and the report
      goes to its `eval/` folder unless `output` is given.
    settings: a `Settings`.
    output: directory of the table (.md, .json) and plot (.png).
    log: where the progress lines go (None: nowhere).
    evaluation: the `Evaluation` of these runs and settings, if the caller built it already
      (after `check_runs`, as the command line does; without it, `check_runs` runs here).
    write_to_runs: each run also keeps `eval/<protocol>_<dataset>_stage<k>.json` with the
      settings; False writes nothing into the run directories (read-only or shared runs), and
      then `output` is required.
  """
  log = log or (lambda text: None)
  if evaluation is None:
    check_runs(the_runs, settings)
  with hold_outputs(the_runs, output, write_to_runs):
    evaluation = evaluation or Evaluation(the_runs[0], settings)
    return _evaluate_runs(the_runs, evaluation, output, log, write_to_runs)


def _evaluate_runs(the_runs: Sequence["wd.Run"], evaluation: Evaluation, output: str | None,
                   log: Callable[[str], object],
                   write_to_runs: bool) -> tuple[list[Row], dict[str, Any]]:
  rows = []
  for run in the_runs:
    log(f"== {evaluation.protocol} on {evaluation.dataset} ({evaluation.eval_split}): "
        f"{run.workdir} stage {run.stage}")
    started = time.monotonic()
    result = evaluation.run(run)
    log(f"   {run.workdir} evaluated in "
        f"{progress.format_duration(time.monotonic() - started)}")
    rows.append((f"{run.name} s{run.stage}", result))
    if not write_to_runs:
      continue
    own = os.path.join(run.workdir, "eval", f"{evaluation.key}_stage{run.stage}.json")
    tf.io.gfile.makedirs(os.path.dirname(own))
    with tf.io.gfile.GFile(own, "w") as f:
      json.dump({"settings": evaluation.settings(), "stage": run.stage, "results": result},
                f, indent=2, sort_keys=True)
  title = evaluation.title()
  out_dir = report_dir(the_runs, output)
  paths = report.write_report(out_dir, evaluation.key, rows, evaluation.settings(), title)
  paths["title"] = title
  paths["settings"] = evaluation.settings()
  return rows, paths


@dataclasses.dataclass
class Report:
  """What `evaluate` returns: the table's rows ((label, {column: metrics}) per run), its
  title, and the paths of the files written (markdown, json, plot)."""
  rows: list[Row]
  title: str
  paths: dict[str, Any]

  @property
  def results(self) -> dict[str, Any]:
    """{column: metrics} of the first run (B1..B5 for probes, label fractions for finetune)."""
    return self.rows[0][1]

  def table(self) -> str:
    """The markdown table (rows = runs, columns = blocks)."""
    return report.markdown_table(self.rows, title=self.title)


def evaluate(run: "str | os.PathLike[str] | wd.Run", protocol: str = "linear", *,
             stage: int | None = None,
             compare: Sequence["str | os.PathLike[str] | wd.Run"] = (),
             output: str | None = None, log: Log | None = print, write_to_runs: bool = True,
             **settings: Any) -> Report:
  """Evaluates `run` (and every run in `compare`) the same way; the Python form of
  `python -m psl_tf.evaluate`.

  Args:
    run: a work directory or a `psl_tf.workdir.Run`.
    protocol: linear, knn, finetune or transfer.
    stage: finished stage of the runs given as directories (default: their last).
    compare: more runs (directories or Runs), one row each.
    output: directory of the table and plot (default: `<run>/eval`).
    log: where progress lines go (None: nowhere).
    write_to_runs: False leaves the run directories untouched (no `eval/` JSON in each run;
      needs `output`), e.g. to evaluate runs one may only read.
    **settings: fields of `Settings` (epochs=, batch_size=, dataset=, ...).
  Returns:
    A `Report`.
  """
  from psl_tf import workdir as wd  # pylint: disable=g-import-not-at-top
  check_output(output, write_to_runs)
  the_runs = [r if isinstance(r, wd.Run) else wd.load_run(r, stage) for r in [run, *compare]]
  rows, paths = evaluate_runs(the_runs, Settings(protocol=protocol, **settings), output, log,
                              write_to_runs=write_to_runs)
  return Report(rows, paths["title"], paths)
