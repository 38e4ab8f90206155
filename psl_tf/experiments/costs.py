"""Training compute of the campaign's rows: block FLOPs, stage costs, equal-compute epochs.

A stage's training cost per image is one forward pass through the frozen blocks below it and
three (forward, gradient to the input, gradient to the weights) through the blocks it trains;
the heads are left out (under 1 % of a cifar_resnet's FLOPs). Block FLOPs are counted by
TensorFlow's profiler on the frozen graph of each block (`block_flops`, the only function here
that imports TensorFlow) and kept in `<results>/flops.json` (`stored_block_flops`), so tables
and equal-compute epochs never need TensorFlow once they are counted.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

from psl_tf import stages as stages_lib

# row protocol -> how long each stage of the row trains, in units of the budget E (epochs per
# stage of the equal-images rows); see `epochs_of`.
PROTOCOLS = ("equal", "paper", "matched", "matched_equal", "none")


def block_flops(backbone: Any, image_size: int) -> list[int]:
  """Forward FLOPs of each block of `backbone` for one `image_size` px image, counted by
  TensorFlow's profiler on the frozen graph (any backbone, nested layers included)."""
  from psl_tf.cli import quiet  # pylint: disable=g-import-not-at-top
  from psl_tf.models import blocks as blocks_lib  # pylint: disable=g-import-not-at-top
  tf = quiet.import_tensorflow_quietly()
  tf.get_logger().setLevel("ERROR")  # the profiler warns about its own v1 API
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  flops = []
  shape: tuple[int, ...] = (1, image_size, image_size, 3)
  options = (tf.compat.v1.profiler.ProfileOptionBuilder(
      tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build())
  for block in blocks_lib.get_blocks(backbone):
    fn = tf.function(lambda x, b=block: b(x, training=False)).get_concrete_function(
        tf.TensorSpec(shape, tf.float32))
    graph = convert_to_constants.convert_variables_to_constants_v2(fn).graph
    info = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(),
                                         cmd="op", options=options)
    flops.append(int(info.total_float_ops))
    shape = (1, *fn.structured_outputs.shape[1:])
  return flops


def cifar_resnet_flops(depth: int, width: int, image_size: int) -> list[int]:
  """Forward FLOPs of each block of a `cifar_resnet` of `depth` and `width` for one image."""
  from psl_tf import models  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  backbone = models.build_backbone("cifar_resnet", depth=depth, width=width)
  return block_flops(backbone, image_size)


def flops_key(depth: int, width: int, image_size: int) -> str:
  """The key of a cifar_resnet's block FLOPs in `flops.json`."""
  return f"cifar_resnet_d{depth}_w{width}_{image_size}px"


def stored_block_flops(results: str, depth: int, width: int, image_size: int,
                       count: Callable[[int, int, int], list[int]] = cifar_resnet_flops
                       ) -> list[int]:
  """Block FLOPs of the cifar_resnet, from `<results>/flops.json`, counted (by `count`) and
  stored there the first time."""
  path = os.path.join(results, "flops.json")
  key = flops_key(depth, width, image_size)
  stored: dict[str, list[int]] = {}
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
  if key not in stored:
    stored[key] = [int(v) for v in count(depth, width, image_size)]
    os.makedirs(results, exist_ok=True)
    with open(path, "w") as f:
      json.dump(stored, f, indent=2, sort_keys=True)
  return stored[key]


def stage_costs(mode: str, flops: Sequence[int]) -> list[int]:
  """Training FLOPs per image of each stage of `mode`: one forward pass through the frozen
  blocks below the stage, three through the trained ones; heads left out."""
  out = []
  for stage in stages_lib.make_stages(mode, 3, "", ""):
    out.append(sum(flops[i - 1] for i in stage.frozen_blocks) +
               3 * sum(flops[i - 1] for i in stage.trained_blocks))
  return out


def epochs_of(mode: str, protocol: str, stage_epochs: int, flops: Callable[[], Sequence[int]]
              ) -> int:
  """Epochs per stage of a row trained in `mode` under `protocol`, at the budget of
  `stage_epochs` (E) epochs per stage of the equal-images rows:

  * equal: E per stage, e2e 3E (every row sees the same images);
  * paper: 3E per stage (each stage as long as e2e);
  * matched / matched_equal: e2e for as many epochs as cost what psl at 3E / at E costs.

  `flops` gives the block FLOPs (called only by the matched protocols)."""
  e = stage_epochs
  if protocol == "equal":
    return 3 * e if mode == "e2e" else e
  if protocol == "paper":
    return 3 * e
  if protocol in ("matched", "matched_equal"):  # e2e costing what psl_paper / psl costs
    block = flops()
    psl = sum(stage_costs("psl", block)) * (3 * e if protocol == "matched" else e)
    return max(1, round(psl / stage_costs("e2e", block)[0]))
  raise ValueError(f"protocol {protocol!r} is not trained")


def per_stage_epochs(epochs: int, stages: int, override: str | None = None) -> list[int]:
  """Epochs of each of `stages` stages: `epochs` for every one, unless `override` (the text of
  an `epochs` flag such as "3,5,7", the same images spent differently) gives them."""
  if not override:
    return [epochs] * stages
  values = [int(v) for v in override.split(",") if v]
  if len(values) == 1:
    values = values * stages
  if len(values) != stages:
    raise ValueError(f"--extra=--epochs={override} gives {len(values)} stages to a row of "
                     f"{stages}")
  return values


def training_tflops(mode: str | None, flops: Sequence[int], epochs: int | Sequence[int],
                    images_per_epoch: int) -> float:
  """Training compute of one run in TFLOPs (10^12 floating-point operations); `epochs` is one
  number for every stage, or one per stage; an untrained row (`mode` None) costs nothing."""
  if mode is None:
    return 0.0
  costs = stage_costs(mode, flops)
  per_stage: list[int] = (list(epochs) if isinstance(epochs, Sequence)
                          else [epochs] * len(costs))
  return sum(c * e * images_per_epoch for c, e in zip(costs, per_stage, strict=True)) / 1e12
