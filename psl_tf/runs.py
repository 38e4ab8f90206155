"""A finished pre-training run read back from its work directory: config, stage, backbone."""

import dataclasses
import os

from psl_tf import config as config_lib
from psl_tf import tasks
from psl_tf import workdir as wd
from psl_tf.models import build_backbone


@dataclasses.dataclass
class Run:
  """What evaluation and export need to know about one run.

  Attributes:
    workdir: the run's work directory.
    config: its `psl_tf.config.Config`, rebuilt from `flags.txt`.
    stage: the finished stage whose weights are used.
    summary: the run's `summary.json` (empty dict if missing).
  """
  workdir: str
  config: config_lib.Config
  stage: int
  summary: dict

  @property
  def name(self):
    """A short row label: the work directory's base name and the mode."""
    base = os.path.basename(os.path.normpath(self.workdir))
    return f"{base} ({self.config.mode})" if self.config.mode not in base else base

  @property
  def weights_path(self):
    return wd.stage_weights_path(self.workdir, self.stage)

  def build_backbone(self):
    """A fresh backbone with this run's architecture and the stage's weights."""
    backbone = build_backbone(self.config.backbone, **self.config.backbone_kwargs())
    wd.load_backbone_weights(backbone, self.weights_path)
    return backbone


def config_from_workdir(workdir):
  """The Config of the run in `workdir`; ValueError if it has no flags.txt."""
  values = wd.read_flags(workdir)
  if values is None:
    raise ValueError(f"{workdir} is not a psl_tf work directory (no {wd.FLAGS_FILE}); pass the "
                     "--workdir of a pre-training run")
  prefixes = ()
  if values.get("task") in tasks.TASKS:
    prefixes = tasks.get_task_class(values["task"]).option_prefixes
  return config_lib.from_flag_dict(values, prefixes)


def load_run(workdir, stage=None):
  """Opens a run at `stage` (default: its last finished stage); ValueError if unusable."""
  config = config_from_workdir(workdir)
  done = wd.finished_stages(workdir)
  if not done:
    raise ValueError(f"{workdir} has no finished stage yet (no stage_<k>/{wd.WEIGHTS_FILE}); "
                     "let pre-training finish a stage first")
  if stage is None:
    stage = done[-1]
  elif stage not in done:
    raise ValueError(f"{workdir} has no finished stage {stage}; finished: "
                     f"{', '.join(map(str, done))}")
  wd.check_finite_weights(wd.stage_weights_path(workdir, stage))  # a diverged run scores nothing
  return Run(workdir, config, stage, wd.read_summary(workdir))
