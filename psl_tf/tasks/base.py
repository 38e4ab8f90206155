"""The small interface every pretext-task ladder implements.

A task turns one pretext task G into levels G_1 ⊂ G_2 ⊂ ... of rising difficulty. The
trainer asks it for four things per stage:

* ``example_fn(level, training)``: a per-example `tf.data` map
  ``(image_uint8[H, W, 3], label, seed[2]) -> (inputs, targets)``. All randomness comes from
  stateless ops on ``seed``, so the same seed gives the same example eagerly and inside
  `tf.data` (tests check this for every task).
* ``build_head(feature_shape, level)``: the stage's head g_i (discarded after training).
* ``forward(ctx, inputs, training)``: the stage's outputs; ``ctx.features(x, training)`` runs
  the backbone blocks of the active stage (stop-gradient included) and ``ctx.head`` is g_i.
* ``loss(targets, outputs)`` (mean over the local batch) and ``accuracy(targets, outputs)``
  (per-example 0/1, the pretext accuracy that `summary.json` reports).

Tasks with state across steps (MoCo's key encoder and queue) also override
``build_stage_state(ctx)``, which returns one object (a `keras.layers.Layer`) that the
StageModel keeps as ``ctx.task_state`` (tracked, so the epoch checkpoints save and restore
it), ``forward_with_extras`` (the training forward pass, returning what the update needs) and
``after_update(ctx, extras)``, which gets those extras explicitly after the optimizer step.
``write_artifacts(workdir)`` saves task files with the run.

Every method that takes a ``level`` has it checked (1..num_levels) by the base class, so no
subclass repeats the check.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence, TypeVar

import keras
import tensorflow as tf

from psl_tf import options as options_lib

if TYPE_CHECKING:  # config imports the tasks: only the type checker follows this import
  from psl_tf import config as config_lib


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """Image geometry a task's pipeline produces.

  Attributes:
    size: side of the square image the backbone sees.
    resize: shorter side the source image is resized to before cropping.
  """
  size: int = 224
  resize: int = 256


# Methods whose `level` argument the base class checks, in every subclass that defines them.
LEVEL_METHODS = ("example_fn", "batch_fn", "build_head", "describe_level", "level_summary",
                 "num_classes", "output_width", "chance")


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _checks_level(method: _Method) -> _Method:
  signature = inspect.signature(method)

  @functools.wraps(method)
  def checked(self: Task, *args: Any, **kwargs: Any) -> Any:
    self.check_level(signature.bind(self, *args, **kwargs).arguments["level"])
    return method(self, *args, **kwargs)
  checked.checks_level = True  # type: ignore[attr-defined]
  return checked  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """Options of a task that has none."""


def grid_pool(maps: Any, grid: int) -> Any:
  """Average pooling of a [N, H, W, C] map to a `grid` x `grid` map of cells, flattened to
  [N, grid * grid * C] (row-major cells, channels last); ``grid=1`` is global average pooling.
  Cells split the map as adaptive pooling does (cell i covers rows floor(i H / grid) ..
  ceil((i + 1) H / grid) - 1), so any map size works; a map smaller than the grid repeats its
  pixels."""
  if grid == 1:
    return keras.ops.mean(maps, axis=(1, 2))
  h, w, c = maps.shape[1], maps.shape[2], maps.shape[3]
  if h is None or w is None:
    raise ValueError("grid pooling needs a fixed feature-map size")
  if h % grid == 0 and w % grid == 0:
    cells = keras.ops.mean(keras.ops.reshape(maps, (-1, grid, h // grid, grid, w // grid, c)),
                           axis=(2, 4))
  else:
    cells = keras.ops.stack([
        keras.ops.stack([_cell_mean(_cell_mean(maps, i, h, grid, axis=1), j, w, grid, axis=1)
                         for j in range(grid)], axis=1)
        for i in range(grid)], axis=1)
  return keras.ops.reshape(cells, (-1, grid * grid * c))


def _cell_mean(x: Any, i: int, side: int, grid: int, axis: int) -> Any:
  """Mean over the i-th of `grid` adaptive cells along `axis` (which the result drops)."""
  start, stop = (i * side) // grid, -((-(i + 1) * side) // grid)
  index = [slice(None)] * len(x.shape)
  index[axis] = slice(start, stop)
  return keras.ops.mean(x[tuple(index)], axis=axis)


class GridPooling(keras.layers.Layer):
  """`grid_pool` as a layer (the heads' first layer; `grid=1`: global average pooling)."""

  def __init__(self, grid: int = 1, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    if int(grid) < 1:
      raise ValueError(f"grid pooling needs a grid of at least 1, got {grid}")
    self.grid = int(grid)

  def call(self, maps: Any) -> Any:
    return grid_pool(maps, self.grid)

  def compute_output_shape(self, input_shape: Sequence[Any]) -> tuple[Any, Any]:
    return (input_shape[0], self.grid * self.grid * input_shape[-1])

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "grid": self.grid}


class StageContext(Protocol):
  """What a task sees of the stage being trained (`psl_tf.trainer.StageModel`)."""
  head: keras.Model  # the stage's head g_i
  task_state: Any  # what `Task.build_stage_state` returned
  stage: Any  # the `psl_tf.stages.Stage` being trained
  blocks: list[keras.Model]  # the backbone's blocks b1..b5

  def features(self, x: Any, training: bool = False, stage_blocks: Any = None) -> Any:
    """The stage's last block's output for inputs `x` (stop-gradient at the stage input)."""


class Task:
  """Base class; subclasses set `name`, `num_levels`, `Options` and implement the abstract
  methods.

  `Options` is a frozen dataclass of `psl_tf.config.option` fields with a `flag_prefix`:
  each field is the flag `--<flag_prefix>_<field>` (generated by `psl_tf.cli.flagdefs`) and
  is read back typed from a run's flags.txt. The constructor takes an `Options` instance
  (`options=`) and/or single options as keywords (`JigsawTask(sizes=(4, 8, 16))`); either
  way each value is typed and checked against its declaration, and ends in `self.options`.
  """

  name: ClassVar[str] = "task"
  num_levels: ClassVar[int] = 3
  Options: ClassVar[type[Any]] = NoOptions

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(**kwargs)
    for name in LEVEL_METHODS:
      method = cls.__dict__.get(name)
      if method is not None and not getattr(method, "checks_level", False):
        setattr(cls, name, _checks_level(method))

  def __init__(self, image_spec: ImageSpec = ImageSpec(), head_hidden: int = 512,
               options: Any = None, head_grid: int = 1, **overrides: Any) -> None:
    self.image_spec = image_spec
    self.head_hidden = head_hidden
    if int(head_grid) < 1:
      raise ValueError(f"--head_grid must be at least 1, got {head_grid}")
    self.head_grid = int(head_grid)
    self.options = options_lib.build_options(self.Options, options, owner=self.name, **overrides)

  @classmethod
  def from_config(cls, config: config_lib.Config) -> Task:
    """Builds the task from a `psl_tf.config.Config` (its options in `task_options`)."""
    return cls(image_spec=ImageSpec(config.image_size, config.resize_to),
               head_hidden=config.head_hidden, options=config.task_options,
               head_grid=config.head_grid)

  # ---- description -------------------------------------------------------------------
  def describe_level(self, level: int) -> str:
    """A short human-readable description of a level, for the stage header."""
    return f"level {level}"

  def level_summary(self, level: int) -> dict[str, Any]:
    """Extra facts about a level for `summary.json` (JSON-serialisable dict)."""
    return {}

  def learning_rate(self, base_lr: float, global_batch_size: int) -> float:
    """The peak learning rate of a stage from `--learning_rate`. Default: unchanged."""
    del global_batch_size
    return base_lr

  def check_level(self, level: int) -> None:
    if not 1 <= level <= self.num_levels:
      raise ValueError(f"task {self.name} has levels 1..{self.num_levels}, got {level}")

  # ---- data --------------------------------------------------------------------------
  def example_fn(self, level: int, training: bool) -> Callable[..., tuple[Any, Any]]:
    raise NotImplementedError

  def batch_fn(self, level: int,
               training: bool) -> Callable[..., tuple[Any, Any]] | None:
    """Optional batched form of `example_fn`, for sources held in memory (equal image sizes):
    ``(images uint8 [B, H, W, 3], labels [B], seeds [B, 2]) -> (inputs, targets)`` that
    equals stacking ``example_fn`` over the rows (to float rounding; tests check it), with
    the heavy image ops run once per batch instead of once per image. None: no batched form
    (the pipeline maps `example_fn`)."""
    del level, training
    return None

  def chance(self, level: int, batch_size: int) -> float:
    """Pretext accuracy of guessing, for the logs. Default: one of `num_classes` classes."""
    del batch_size
    return 1.0 / self.num_classes(level)

  # ---- model -------------------------------------------------------------------------
  def num_classes(self, level: int) -> int:
    """Classes of a classifying task at `level` (rotation: angles; jigsaw: permutations)."""
    raise NotImplementedError

  def output_width(self, level: int) -> int:
    """Width of the head's output at `level`: the classes of a classifying task (default),
    the projection width of a contrastive one."""
    return self.num_classes(level)

  def build_head(self, feature_shape: Sequence[int | None], level: int) -> keras.Model:
    """Default head: average pool (global, or to a `head_grid` x `head_grid` grid, flattened),
    optional hidden layer, linear classifier."""
    inputs = keras.Input(tuple(feature_shape))
    x = GridPooling(self.head_grid, name="pool")(inputs)
    if self.head_hidden:
      x = keras.layers.Dense(self.head_hidden, use_bias=False)(x)
      x = keras.layers.BatchNormalization(momentum=0.9)(x)
      x = keras.layers.ReLU()(x)
    # float32 logits under a mixed-precision policy (softmax and loss stay float32).
    logits = keras.layers.Dense(self.output_width(level), name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=f"head_{self.name}_l{level}")

  def build_stage_state(self, ctx: StageContext) -> keras.layers.Layer | None:
    """Per-stage state beyond the head (variables, models), or None (the default).

    The StageModel `ctx` keeps what this returns as `ctx.task_state`, a tracked attribute,
    so the epoch checkpoints save and restore it with the model."""
    del ctx
    return None

  def forward(self, ctx: StageContext, inputs: Any, training: bool) -> Any:
    return ctx.head(ctx.features(inputs, training), training=training)

  def forward_with_extras(self, ctx: StageContext, inputs: Any,
                          training: bool) -> tuple[Any, dict[str, Any]]:
    """The forward pass of a train step: (outputs, extras), where extras is what
    `after_update` needs from this step (a dict of tensors). Default: no extras."""
    return self.forward(ctx, inputs, training), {}

  def after_update(self, ctx: StageContext, extras: dict[str, Any]) -> None:
    """Called inside the train step after the optimizer update (e.g. EMA updates), with the
    extras of this step's `forward_with_extras`."""
    del ctx, extras

  def extra_trainable_variables(self, ctx: StageContext) -> list[keras.Variable]:
    """Variables beyond the stage's blocks and head that get gradients. Default: none."""
    del ctx
    return []

  def write_artifacts(self, workdir: str) -> None:
    """Writes files the run's work directory should keep (e.g. jigsaw permutations)."""
    del workdir

  # ---- objective ---------------------------------------------------------------------
  def loss(self, targets: Any, outputs: Any) -> Any:
    """Mean over the local batch; the trainer divides by the replica count once."""
    per_example = keras.losses.sparse_categorical_crossentropy(targets, outputs, from_logits=True)
    return tf.reduce_mean(per_example)

  def accuracy(self, targets: Any, outputs: Any) -> Any:
    """Per-example correctness as float32 (shape [local batch])."""
    predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.cast(targets, tf.int32)), tf.float32)
