"""The frozen description of one pre-training run. Built from flags in `psl_tf.train`."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a pre-training run needs; see `psl_tf/cli/flagdefs.py` for each field's meaning.

  The defaults are the offline demo's (small ResNet, 32 px, Adam, 30 epochs per stage: a run
  that learns in minutes on a CPU); the paper's settings are in `flags/*.flags`."""
  # What to learn.
  task: str = "rotation"
  mode: str = "psl"
  stages: str = ""
  levels: str = ""
  task_options: dict = dataclasses.field(default_factory=dict)
  # Data.
  dataset: str = "demo"
  data_dir: str | None = None
  train_split: str = "train"
  heldout_split: str = "auto"
  heldout_examples: int = 10_000
  image_size: int = 32
  resize: int = 0
  image_check: str = "full"
  shuffle_buffer: int = 10_000
  cache: str = "auto"
  # Model.
  backbone: str = "cifar_resnet"
  depth: int = 10
  width: int = 16
  filters_factor: int = 4
  recompute: bool = False
  head_hidden: int = 512
  frozen_bn: str = "inference"
  sync_bn: bool = False
  precision: str = "float32"
  # Optimisation, per stage.
  batch_size: int = 64
  epochs: tuple = (30,)
  steps_per_epoch: int = 0
  optimizer: str = "adam"
  learning_rate: float = 0.003
  momentum: float = 0.9
  weight_decay: float = 1e-4
  lr_schedule: str = "cosine"
  lr_step_split: str = "20,20,10,10"
  lr_decay: float = 0.1
  warmup_epochs: float = 0.0
  # Running.
  seed: int = 0
  workdir: str = "runs/default"
  export: bool = True
  verbose: int = 1

  @property
  def resize_to(self):
    """Shorter side before cropping: given, or 256/224 of the crop as in the paper."""
    return self.resize or int(round(self.image_size * 256 / 224))

  def stage_epochs(self, num_stages):
    """Epochs of each stage: one value for all, or one per stage."""
    if len(self.epochs) == 1:
      return list(self.epochs) * num_stages
    if len(self.epochs) != num_stages:
      raise ValueError(f"--epochs gives {len(self.epochs)} values for {num_stages} stages; "
                       "give one value or one per stage")
    return list(self.epochs)

  def backbone_kwargs(self):
    """Keyword arguments of the chosen backbone's builder (spatial size left open, so the
    same backbone takes whole images, jigsaw tiles and probe crops)."""
    if self.backbone == "cifar_resnet":
      return {"depth": self.depth, "width": self.width}
    if self.backbone == "revnet50":
      return {"filters_factor": self.filters_factor, "recompute": self.recompute}
    return {}


def _parse_field(field, text):
  """A flags.txt string as the type of a Config field."""
  kind = str(field.type)  # "<class 'int'>", "str | None", ...
  if text in ("None", "") and "None" in kind:
    return None
  if "bool" in kind:
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"--{field.name}={text} is not a boolean")
    return text.lower() in ("true", "1")
  if "int" in kind:
    return int(text)
  if "float" in kind:
    return float(text)
  if "tuple" in kind:
    return tuple(int(v) for v in text.split(",") if v)
  return text


def from_flag_dict(values, task_prefixes=()):
  """A Config from resolved flags as `workdir.read_flags` returns them ({name: string}).

  Flags that are not Config fields (strategy, tpu, ...) are ignored; flags named
  `<prefix>_<option>` for a prefix in `task_prefixes` become `task_options` (as strings).
  Fields missing from `values` keep their defaults.
  """
  kwargs, options = {}, {}
  for field in dataclasses.fields(Config):
    if field.name in values and field.name != "task_options":
      try:
        kwargs[field.name] = _parse_field(field, values[field.name])
      except ValueError as e:
        raise ValueError(f"cannot read --{field.name}={values[field.name]}: {e}") from None
  for name, text in values.items():
    for prefix in task_prefixes:
      if name.startswith(prefix + "_"):
        options[name[len(prefix) + 1:]] = text
  return Config(task_options=options, **kwargs)
