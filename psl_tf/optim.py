"""Optimizers and learning-rate schedules for one stage.

A new optimizer is built for every stage: a Keras 3 optimizer is bound to the variables it
was built with, and each stage trains a different set.
"""

import keras

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "cosine", "constant")


def parse_split(text):
  """'20,20,10,10' -> [20.0, 20.0, 10.0, 10.0]."""
  values = [float(v) for v in text.replace(" ", "").split(",") if v]
  if not values or any(v <= 0 for v in values):
    raise ValueError(f"--lr_step_split needs positive numbers like 20,20,10,10, got {text!r}")
  return values


def make_schedule(kind, base_lr, total_steps, step_split="20,20,10,10", decay=0.1,
                  warmup_steps=0):
  """A learning-rate schedule over one stage's steps.

  Args:
    kind: 'step' (piecewise constant), 'cosine' (decay to 0) or 'constant'.
    base_lr: peak learning rate.
    total_steps: steps in the stage.
    step_split: for 'step', the relative lengths of the constant pieces; the paper's
      20/20/10/10 over 60 epochs drops x`decay` after 1/3, 2/3 and 5/6 of the stage.
    decay: factor between consecutive pieces of the step schedule.
    warmup_steps: linear warm-up from 0 (cosine only).
  """
  if kind not in SCHEDULES:
    raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}")
  total_steps = max(int(total_steps), 1)
  if kind == "constant":
    return float(base_lr)
  if kind == "cosine":
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    if warmup_steps > 0:
      return keras.optimizers.schedules.CosineDecay(
          0.0, total_steps - warmup_steps, warmup_target=float(base_lr),
          warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(float(base_lr), total_steps)
  pieces = parse_split(step_split)
  cumulative, boundaries = 0.0, []
  for piece in pieces[:-1]:
    cumulative += piece
    boundaries.append(int(round(total_steps * cumulative / sum(pieces))))
  values = [float(base_lr) * decay ** i for i in range(len(pieces))]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_optimizer(name, learning_rate, momentum=0.9):
  """A fresh optimizer. Weight decay is not the optimizer's job here: the trainer adds an
  L2 term over kernels only (no biases, no BatchNorm), as the paper's SGD does."""
  if name == "sgd":
    return keras.optimizers.SGD(learning_rate, momentum=momentum)
  if name == "adam":
    return keras.optimizers.Adam(learning_rate)
  raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def is_decayed(variable):
  """Weight decay goes on conv and dense kernels only, never on biases or BatchNorm."""
  return len(variable.shape) >= 2
