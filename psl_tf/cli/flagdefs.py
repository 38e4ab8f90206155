"""Command-line flags of `python -m psl_tf.train`, generated from the typed declarations.

Nothing here declares a setting by hand: each flag comes from a `psl_tf.config.option` field,

* of `psl_tf.config.Config` (the run's settings: `--task`, `--epochs`, ...),
* of every registered task's `Options` (`--<prefix>_<option>`: `--jigsaw_sizes`,
  `--contrastive_blur_prob`, ...; options two tasks share, like the contrastive ones, are one
  flag),
* of `Launch` below: how this process runs (strategy, devices, guards), which never changes
  what a run learns and is not part of its `Config`.

Besides, `--recipe=NAME` starts from a packaged flagfile (`psl_tf.recipes`): `apply_recipe`
sets each of its flags that the command line (or a --flagfile) did not give.

Flags are defined only when a program asks (`define_train_flags`), so importing any module
of the package defines none. Library code gets a `Config` (`psl_tf.config.from_flags`).
"""

import dataclasses

from absl import flags

from psl_tf import config as config_lib
from psl_tf import distribute
from psl_tf import options as options_lib
from psl_tf import recipes
from psl_tf import tasks


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process runs a pre-training run (not part of its Config)."""
  strategy: str = options_lib.option("auto", "tf.distribute strategy.",
                                     choices=distribute.STRATEGIES)
  tpu: str = options_lib.option("", "TPU name or address for --strategy=tpu.")
  cpu_replicas: int = options_lib.option(
      0, "With --strategy=mirrored: split the CPU into this many logical devices and give each "
      "replica its own input pipeline, as each worker of --strategy=multi_worker has (the "
      "one-process twin of an N-worker run, for testing; scripts/multi_worker_drill.py). "
      "0: off.", range=(0, 64))
  first_batch_timeout: int = options_lib.option(
      600, "Seconds a stage may wait for its first batch before the run stops with an error "
      "(0: wait forever).", range=(0, 10**6))
  deterministic: bool = options_lib.option(
      False, "Deterministic TensorFlow ops (tf.config.experimental.enable_op_determinism): "
      "reruns and resumed runs give bit-identical weights; slower.")
  repair_flags: bool = options_lib.option(
      False, "The --workdir's flags.txt is damaged (cut short by a kill or a full disk): "
      "replace it with this command line's flags, which must be the run's own (the flags "
      "left in it are checked against them); the damaged file is kept as flags.txt.damaged.")


def declarations():
  """{flag name: option field} of every training flag, in a stable order."""
  found = {f.name: f for f in options_lib.options_of(config_lib.Config)}
  for name in sorted(tasks.TASKS):
    options_cls = tasks.TASKS[name].Options
    fields = {f.name: f for f in options_lib.options_of(options_cls)}
    for field_name, flag in options_lib.flag_names(options_cls).items():
      found.setdefault(flag, fields[field_name])
  found.update({f.name: f for f in options_lib.options_of(Launch)})
  return found


# Flags that may change when a run is resumed: they do not change what is learned.
RESUME_SAFE = frozenset(
    {"flagfile"} | {f.name for f in options_lib.options_of(Launch)}
    | {name for name, field in declarations().items() if field.metadata["resume_safe"]})

# Allowed range of every numeric flag: (low, high, low_is_open), from its declaration.
RANGES = {name: field.metadata["range"] for name, field in declarations().items()
          if field.metadata["range"] is not None}


def define_flag(name, field, flag_values):
  """Defines one flag from an option field."""
  meta = field.metadata
  kind, default, text = meta["kind"], field.default, meta["help"]
  if kind == "bool":
    flags.DEFINE_bool(name, default, text, flag_values=flag_values)
  elif kind == "int":
    flags.DEFINE_integer(name, default, text, flag_values=flag_values)
  elif kind == "float":
    flags.DEFINE_float(name, default, text, flag_values=flag_values)
  elif kind == "enum":
    flags.DEFINE_enum(name, default, list(meta["choices"]), text, flag_values=flag_values)
  elif kind in ("int_list", "str_list"):
    flags.DEFINE_list(name, [str(v) for v in default], text, flag_values=flag_values)
  else:
    flags.DEFINE_string(name, default, text, flag_values=flag_values)


def define_train_flags(flag_values=flags.FLAGS):
  """Defines every training flag in `flag_values` (idempotent: a second call does nothing)."""
  if "task" in flag_values:
    return flag_values
  for name, field in declarations().items():
    define_flag(name, field, flag_values)
  flags.DEFINE_string(
      "recipe", None, "Start from a packaged recipe (psl_tf/flags/<name>.flags); every flag "
      "given explicitly overrides it, wherever it stands. The measured-best recipe per task "
      "and data size has the plain name, the paper's protocol ends in _paper. Known: "
      f"{', '.join(recipes.names())}.", flag_values=flag_values)
  return flag_values


def apply_recipe(flag_values):
  """Gives every flag of the `--recipe` the recipe's value unless the command line (or a
  --flagfile) set it; returns the recipe's name, or None without --recipe. ValueError (one
  line, naming the known recipes) for an unknown name."""
  name = flag_values["recipe"].value
  if not name:
    return None
  for flag, text in recipes.load(name).items():
    if flag not in flag_values:
      raise ValueError(f"recipe {name} sets --{flag}, which is not a flag of psl_tf.train")
    if not flag_values[flag].present:
      flag_values.set_default(flag, text)  # the value too, since the flag was not given
  return name


def flag_text(value):
  """A parsed flag value as flags.txt writes it (`true`/`false`, lists joined by commas)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return ",".join(str(x) for x in value)
  return str(value)


def train_flag_texts(flag_values):
  """{name: text} of every training flag that has a value, as flags.txt stores them."""
  return {name: flag_text(flag_values[name].value) for name in declarations()
          if flag_values[name].value is not None}


def default_texts():
  """{name: text} of every training flag's default."""
  return {name: options_lib.to_text(field, field.default)
          for name, field in declarations().items() if field.default is not None}


def check_ranges(flag_values):
  """Raises ValueError, in one line, for the first numeric flag outside its range."""
  for name, field in declarations().items():
    if name in flag_values and field.metadata["range"] is not None:
      options_lib.check_value(field, flag_values[name].value, name)
