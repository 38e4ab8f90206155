"""Optimizers and learning-rate schedules for one stage.

A new optimizer is built for every stage: a Keras 3 optimizer is bound to the variables it
was built with, and each stage trains a different set.
"""

import keras
from keras import ops

from psl_tf import keras_private

OPTIMIZERS = ("sgd", "adam", "lars")
SCHEDULES = ("step", "cosine", "constant")


def parse_split(text):
  """'20,20,10,10' -> [20.0, 20.0, 10.0, 10.0]."""
  values = [float(v) for v in text.replace(" ", "").split(",") if v]
  if not values or any(v <= 0 for v in values):
    raise ValueError(f"--lr_step_split needs positive numbers like 20,20,10,10, got {text!r}")
  return values


class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """`schedule` read `offset` steps later: a stage that continues a run-long schedule from
  where the stages below it stopped (its optimizer counts its own steps from 0)."""

  def __init__(self, schedule, offset):
    self.schedule = schedule
    self.offset = int(offset)

  def __call__(self, step):
    return self.schedule(ops.add(ops.cast(step, "int64"), self.offset))

  def get_config(self):
    return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
            "offset": self.offset}

  @classmethod
  def from_config(cls, config):
    return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["offset"])


def make_schedule(kind, base_lr, total_steps, step_split="20,20,10,10", decay=0.1,
                  warmup_steps=0, start_step=0):
  """A learning-rate schedule over one stage's steps.

  Args:
    kind: 'step' (piecewise constant), 'cosine' (decay to 0) or 'constant'.
    base_lr: peak learning rate.
    total_steps: steps in the stage.
    step_split: for 'step', the relative lengths of the constant pieces; the paper's
      20/20/10/10 over 60 epochs drops x`decay` after 1/3, 2/3 and 5/6 of the stage.
    decay: factor between consecutive pieces of the step schedule.
    warmup_steps: linear warm-up from 0 (cosine only).
    start_step: the schedule's step at which the optimizer's step 0 reads it (0: the schedule
      starts with the optimizer; > 0: a stage continuing a schedule of `total_steps` over
      the whole run, the stages below it having taken `start_step` steps).
  """
  if start_step:
    schedule = make_schedule(kind, base_lr, total_steps, step_split, decay, warmup_steps)
    if _is_schedule(schedule):
      return ShiftedSchedule(schedule, start_step)
    return schedule  # a constant rate reads the same at every step
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
  if len(pieces) == 1:  # one piece: nothing to drop
    return float(base_lr)
  cumulative, boundaries = 0.0, []
  for piece in pieces[:-1]:
    cumulative += piece
    boundaries.append(int(round(total_steps * cumulative / sum(pieces))))
  values = [float(base_lr) * decay ** i for i in range(len(pieces))]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def _is_schedule(learning_rate):
  return isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)


def rate_at(learning_rate, step):
  """The rate an optimizer given `learning_rate` (a schedule or a number) uses at `step`."""
  return float(learning_rate(step) if _is_schedule(learning_rate) else learning_rate)


def build_optimizer(name, learning_rate, momentum=0.9, weight_decay=0.0):
  """A fresh optimizer.

  For 'sgd' and 'adam' weight decay is not the optimizer's job: the trainer adds an L2 term
  over kernels only (no biases, no BatchNorm), as the paper's SGD does, and `weight_decay`
  is ignored here. 'lars' applies `weight_decay` itself (it sets `handles_weight_decay`, so
  the caller passes 0 to the trainer's L2 term).
  """
  if name == "sgd":
    return keras.optimizers.SGD(learning_rate, momentum=momentum)
  if name == "adam":
    return keras.optimizers.Adam(learning_rate)
  if name == "lars":
    return LARS(learning_rate, momentum=momentum, weight_decay_rate=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


def is_decayed(variable):
  """Weight decay goes on conv and dense kernels only, never on biases or BatchNorm."""
  return len(variable.shape) >= 2


class LARS(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You et al. 2017) as used by SimCLR.

  For a variable w with gradient g, learning rate lr, momentum mu, weight decay wd and
  trust coefficient eta, when w is adapted (by default: rank >= 2, i.e. conv and dense
  kernels):

    g' = g + wd * w
    trust = eta * ||w|| / ||g'||  (1 when ||w|| or ||g'|| is 0)
    v = mu * v + lr * trust * g'
    w = w - v

  Excluded variables (biases and BatchNorm parameters, rank < 2) get neither the weight
  decay nor the trust ratio, only plain momentum SGD: v = mu * v + lr * g; w = w - v.

  Weight decay is this optimizer's job (`handles_weight_decay = True`): the trainer's L2
  term must be 0 when it is used (`psl_tf/pretraining.py` does that).

  Args:
    learning_rate: float or schedule.
    momentum: mu.
    weight_decay_rate: wd, applied to adapted variables only.
    trust_coefficient: eta (SimCLR: 0.001).
    exclude_fn: `variable -> bool`, True for variables that get plain momentum SGD
      (default: rank < 2).
  """

  handles_weight_decay = True

  def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay_rate=0.0,
               trust_coefficient=0.001, exclude_fn=None, name="lars", **kwargs):
    # The base class's own (decoupled) weight_decay stays None: the decay here is coupled
    # to the gradient before the trust ratio, as in LARS.
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
    if weight_decay_rate < 0 or trust_coefficient <= 0:
      raise ValueError("LARS needs weight_decay_rate >= 0 and trust_coefficient > 0")
    self.momentum = float(momentum)
    self.weight_decay_rate = float(weight_decay_rate)
    self.trust_coefficient = float(trust_coefficient)
    self.exclude_fn = exclude_fn or (lambda v: len(v.shape) < 2)

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.momentums = self.add_optimizer_variables(variables, "momentum")

  def update_step(self, gradient, variable, learning_rate):
    lr = ops.cast(learning_rate, variable.dtype)
    g = ops.cast(gradient, variable.dtype)
    v = self.momentums[keras_private.variable_index(self, variable)]
    if not self.exclude_fn(variable):
      w = ops.convert_to_tensor(variable)
      if self.weight_decay_rate:
        g = g + ops.cast(self.weight_decay_rate, variable.dtype) * w
      w_norm = ops.sqrt(ops.sum(ops.square(w)))
      g_norm = ops.sqrt(ops.sum(ops.square(g)))
      ratio = ops.where(
          ops.logical_and(w_norm > 0, g_norm > 0),
          ops.cast(self.trust_coefficient, variable.dtype) * w_norm
          / ops.maximum(g_norm, ops.cast(1e-30, variable.dtype)),
          ops.ones_like(w_norm))
      lr = lr * ratio
    self.assign(v, ops.add(ops.multiply(v, ops.cast(self.momentum, variable.dtype)),
                           ops.multiply(g, lr)))
    self.assign_sub(variable, v)

  def get_config(self):
    config = super().get_config()
    config.update({"momentum": self.momentum, "weight_decay_rate": self.weight_decay_rate,
                   "trust_coefficient": self.trust_coefficient})
    return config
