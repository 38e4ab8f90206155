"""Options: dataclass fields that are also flags, and the one text form they take.

An option is declared once, as a dataclass field made by `option(...)`: its type, default,
help text, allowed choices or numeric range, and whether a resumed run may change it. The
run's `psl_tf.config.Config`, every task's `Options`, the evaluation `Settings` and the
command line's launch settings are all declared this way; `psl_tf.cli.flagdefs` generates the
flags from them, and `to_text` / `from_text` are how a value is written in `flags.txt` and read
back.

This module imports nothing of the package (nor TensorFlow), so whatever declares options can
import it without importing what uses them: the tasks declare their options here, and
`psl_tf.config` imports the tasks.
"""

import dataclasses
import math

# How an option is written in flags.txt and on the command line.
KINDS = ("str", "int", "float", "bool", "enum", "int_list", "str_list")
INT_MAX = 2**31 - 1  # the largest int32: ranges of counts and seeds


def option(default, help, *, choices=None, range=None, kind=None, resume_safe=False):  # pylint: disable=redefined-builtin
  """A dataclass field that is also a flag.

  Args:
    default: the default value (a tuple for list options).
    help: the flag's help text.
    choices: allowed values of a string option (an enum flag).
    range: (low, high) or (low, high, low_is_open) of a numeric option; every numeric
      option must have one, so a value like --learning_rate=-1 is refused in one line.
    kind: one of KINDS; inferred from the default when omitted.
    resume_safe: a resumed run may change it (it does not change what is learned).
  """
  if kind is None:
    kind = ("enum" if choices else "bool" if isinstance(default, bool) else
            "int" if isinstance(default, int) else "float" if isinstance(default, float) else
            "int_list" if isinstance(default, tuple) else "str")
  if kind not in KINDS:
    raise ValueError(f"unknown option kind {kind!r}")
  if kind in ("int", "float") and range is None:
    raise ValueError(f"numeric option with default {default!r} needs a range")
  if range is not None and len(range) == 2:
    range = (*range, False)
  metadata = {"help": help, "kind": kind, "choices": tuple(choices) if choices else None,
              "range": range, "resume_safe": resume_safe}
  return dataclasses.field(default=default, metadata=metadata)


def is_option(field):
  return "kind" in field.metadata


def to_text(field, value):
  """The flags.txt text of `value` for an option field (None for an unset value)."""
  if value is None:
    return None
  kind = field.metadata["kind"]
  if kind == "bool":
    return "true" if value else "false"
  if kind in ("int_list", "str_list"):
    return ",".join(str(v) for v in value)
  if kind == "float":
    return str(float(value))
  return str(value)


def from_text(field, text, flag=None):
  """The typed value of an option field from its text; ValueError names the flag."""
  flag = flag or field.name
  kind = field.metadata["kind"]
  if text is None or (text in ("None", "") and field.default is None):
    return None
  try:
    if kind == "bool":
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError("not a boolean")
      value = text.lower() in ("true", "1")
    elif kind == "int":
      value = int(text)
    elif kind == "float":
      value = float(text)
    elif kind == "int_list":
      try:
        value = tuple(int(v) for v in text.split(",") if v.strip())
      except ValueError:
        raise ValueError(f"--{flag} takes whole numbers separated by commas, got {text}") from None
    elif kind == "str_list":
      value = tuple(v for v in text.split(",") if v)
    else:
      value = text
  except ValueError as e:
    if str(e).startswith("--"):
      raise
    raise ValueError(f"--{flag}={text} is not a valid {kind.replace('_', ' ')}") from None
  check_value(field, value, flag)
  return value


def coerce(field, value, flag=None):
  """`value` (typed, or a text as in flags.txt) as the field's type, checked."""
  if isinstance(value, str) and field.metadata["kind"] not in ("str", "enum"):
    return from_text(field, value, flag)
  kind = field.metadata["kind"]
  if value is not None:
    if kind == "int_list":
      try:
        value = tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(f"--{flag or field.name} takes whole numbers, got "
                         f"{','.join(map(str, value))}") from None
    elif kind == "str_list":
      value = tuple(str(v) for v in value)
    elif kind == "float":
      value = float(value)
    elif kind == "int":
      if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"--{flag or field.name}={value} is not a whole number")
      value = int(value)
    elif kind == "bool":
      value = bool(value)
  check_value(field, value, flag)
  return value


def check_value(field, value, flag=None):
  """Raises ValueError, in one line, for a value outside the field's choices or range."""
  flag = flag or field.name
  choices, bounds = field.metadata["choices"], field.metadata["range"]
  if value is None:
    return
  if choices and value not in choices:
    raise ValueError(f"--{flag}={value} is not one of {', '.join(choices)}")
  if bounds:
    low, high, low_open = bounds
    bad = not math.isfinite(value) or value > high or value < low or (low_open and value == low)
    if bad:
      interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
      raise ValueError(f"--{flag}={value} is out of range: it must be in {interval}")


def options_of(cls):
  """The option fields of a dataclass, in declaration order."""
  return [f for f in dataclasses.fields(cls) if is_option(f)]


def build_options(cls, values=None, owner="task", **overrides):
  """An instance of the options dataclass `cls` from an instance, a dict and/or keywords.

  Values may be typed or texts (as in flags.txt); each is converted and checked. Unknown
  names are refused, naming the known ones."""
  if isinstance(values, cls):
    values = dataclasses.asdict(values)
  values = {**(values or {}), **overrides}
  fields = {f.name: f for f in options_of(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f"{owner} got unknown options {unknown}; known: {', '.join(fields)}")
  prefixes = flag_names(cls)
  return cls(**{name: coerce(fields[name], value, prefixes[name])
                for name, value in values.items()})


def flag_names(cls):
  """{field name: flag name} of an options dataclass: `<prefix>_<name>`, where the prefix is
  the `flag_prefix` of the class that declares the field (so options a task inherits from a
  shared base, like the contrastive ones, keep the base's flags)."""
  names = {}
  for field in options_of(cls):
    prefix = ""
    for klass in reversed(cls.__mro__):
      if field.name in klass.__dict__.get("__annotations__", {}):
        prefix = klass.__dict__.get("flag_prefix", prefix)
        break
    names[field.name] = f"{prefix}_{field.name}" if prefix else field.name
  return names


def task_option_fields(options):
  """{flag name: field} of a task's options instance (or class)."""
  cls = options if isinstance(options, type) else type(options)
  fields = {f.name: f for f in options_of(cls)}
  return {flag: fields[name] for name, flag in flag_names(cls).items()}
