"""Recipes: the packaged flagfiles (`psl_tf/flags/<name>.flags`), found by name.

A recipe is an absl flagfile shipped inside the package, so it is there in an installed copy
as well as in a checkout (where the repository's `flags/` points at `psl_tf/flags/`). Per task
and data size there is the measured-best recipe, the one to take (`rotation_cifar10`), and the
paper's protocol beside it (`rotation_cifar10_paper`, `rotation_imagenet_paper`). The first
comment lines of each say what was measured with it and where the record is
(`docs/results/...`), or that it was never run.

  python -m psl_tf.train --recipe=rotation_cifar10 --dataset=folder:/data/cifar10

  from psl_tf import recipes
  recipes.names()                       # every recipe
  recipes.path("rotation_cifar10")      # its flagfile, for --flagfile=
  recipes.load("rotation_cifar10")      # {flag: text}, as a run's flags.txt reads
  recipes.summary("rotation_cifar10")   # what it is, [measured] or [never run]
  config = recipes.config("rotation_cifar10", dataset="folder:/data/cifar10", seed=1)

On the command line the recipe comes first and every flag given explicitly overrides it,
wherever it stands. This module imports no TensorFlow until `config` is called.
"""

import importlib.resources
import os
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from psl_tf import config as config_lib

SUFFIX = ".flags"
PAPER_SUFFIX = "_paper"


def _folder() -> Traversable:
  return importlib.resources.files("psl_tf").joinpath("flags")


def names() -> list[str]:
  """Names of every packaged recipe, sorted."""
  return sorted(entry.name[:-len(SUFFIX)] for entry in _folder().iterdir()
                if entry.name.endswith(SUFFIX))


def _entry(name: str) -> Traversable:
  known = names()
  if name not in known:
    raise ValueError(f"unknown recipe {name!r}; known: {', '.join(known)}")
  return _folder().joinpath(name + SUFFIX)


def path(name: str) -> str:
  """The file system path of recipe `name`'s flagfile; ValueError naming the known ones."""
  entry = _entry(name)
  # A package installed as files (a wheel, an editable install, a checkout) gives a real path.
  # (a pathlib.Path there; the Traversable protocol in general, hence the ignore)
  return os.fspath(entry)  # type: ignore[call-overload]


def text(name: str) -> str:
  """The flagfile of recipe `name`, comments included."""
  return _entry(name).read_text(encoding="utf-8")


def load(name: str) -> dict[str, str]:
  """{flag name: text} of recipe `name` (`--name=value` lines; a bare `--name` is true)."""
  values = {}
  for line in text(name).splitlines():
    line = line.strip()
    if line.startswith("--"):
      key, _, value = line[2:].partition("=")
      values[key] = value if "=" in line else "true"
  return values


def comments(name: str) -> list[str]:
  """The recipe's comment lines before its first flag, without the `#`. The first says what
  it is; the second starts with `Measured` (and the lines after name the records under
  `docs/results/` that show it) or with `Never run`."""
  lines = []
  for line in text(name).splitlines():
    if line.strip().startswith("--"):
      break
    if line.startswith("#"):
      lines.append(line[1:].strip())
  return lines


def measured(name: str) -> bool:
  """Whether the recipe's result is recorded (its second comment line starts `Measured`)."""
  lines = comments(name)
  return len(lines) > 1 and lines[1].startswith("Measured")


def records(name: str) -> list[str]:
  """The record paths (`docs/results/...`, relative to a checkout) the recipe's comments name."""
  found = []
  for line in comments(name):
    found += [word.rstrip(",.;)") for word in line.split() if word.startswith("docs/results/")]
  return found


def summary(name: str) -> str:
  """One line: what the recipe is, and whether it was measured."""
  lines = comments(name)
  title = lines[0] if lines else ""
  return f"{title} [{'measured' if measured(name) else 'never run'}]"


def listing() -> str:
  """Every recipe with its one-line summary, one per line (for --help and docs)."""
  width = max(len(n) for n in names())
  return "\n".join(f"  {n:<{width}}  {summary(n)}" for n in names())


def config(name: str, **overrides: Any) -> "config_lib.Config":
  """The `psl_tf.config.Config` of recipe `name`, with `overrides` (Config fields, typed or as
  texts) applied on top, as flags on the command line override `--recipe`. `task_options`
  given as a dict is merged into the recipe's task options."""
  from psl_tf import config as config_lib  # pylint: disable=g-import-not-at-top,redefined-outer-name  (TensorFlow)
  base = config_lib.from_flags(load(name))
  fields = {f.name: getattr(base, f.name) for f in config_lib.options_of(config_lib.Config)}
  fields["workdir"] = load(name).get("workdir", "")  # else derived from task, mode, dataset
  options = overrides.pop("task_options", None)
  if options is None or isinstance(options, dict):
    task_changes = options or {}
    same_task = overrides.get("task", base.task) == base.task
    inherited = ({o.name: getattr(base.task_options, o.name)
                  for o in config_lib.options_of(type(base.task_options))} if same_task else {})
    options = {**inherited, **task_changes}
  return config_lib.Config(**{**fields, **overrides}, task_options=options)
