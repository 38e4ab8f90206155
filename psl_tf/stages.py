"""Stage partitions and training modes (paper 3.2, 3.4 and the ablations of 4.5).

A stage is a contiguous range of blocks ``first..last`` trained together on one task level.
Blocks below ``first`` are frozen (or, in ``psl_f``, still get gradients); blocks above
``last`` are not computed at all.
"""

import dataclasses
import re

NUM_BLOCKS = 5
MODES = ("psl", "sl", "psl_f", "e2e", "greedy")

DEFAULT_PARTITIONS = {
    "psl": "1-3,2-4,3-5",     # the paper's S1 = B1-B3, S2 = B2-B4, S3 = B3-B5
    "sl": "1-3,2-4,3-5",      # same stages, every stage on the hardest level
    "psl_f": "1-3,2-4,3-5",   # same stages, full gradients to every block below
    "e2e": "1-5",             # ordinary end-to-end training
    "greedy": "1-2,3-4,5-5",  # GIM-style non-overlapping stages
}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One learning stage.

  Attributes:
    index: 1-based stage number.
    first: first block of the stage (1-based).
    last: last block of the stage; its output feeds the head.
    level: task level G_level trained in this stage.
    grad_first: first block that receives gradients: `first`, or 1 in `psl_f`.
  """
  index: int
  first: int
  last: int
  level: int
  grad_first: int

  @property
  def trained_blocks(self):
    return tuple(range(self.grad_first, self.last + 1))

  @property
  def frozen_blocks(self):
    return tuple(range(1, self.grad_first))

  def describe(self):
    trained = f"B{self.grad_first}-B{self.last}" if self.grad_first != self.last else f"B{self.last}"
    frozen = f", B1-B{self.grad_first - 1} frozen" if self.grad_first > 1 else ""
    return f"stage {self.index}: train {trained}{frozen}"


def parse_partition(text):
  """'1-3,2-4,3-5' -> [(1, 3), (2, 4), (3, 5)]; raises ValueError with the reason."""
  ranges = []
  for part in text.replace(" ", "").split(","):
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not match:
      raise ValueError(f"stage {part!r} is not a block range like '2-4' (in --stages={text})")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= NUM_BLOCKS:
      raise ValueError(f"stage {part!r} must satisfy 1 <= first <= last <= {NUM_BLOCKS}")
    ranges.append((first, last))
  for (f0, l0), (f1, l1) in zip(ranges, ranges[1:]):
    if not (f1 >= f0 and l1 > l0):
      raise ValueError(f"stages must move up the network: {f0}-{l0} is followed by {f1}-{l1}")
    if f1 > l0 + 1:
      raise ValueError(f"blocks between stage {f0}-{l0} and {f1}-{l1} would never be trained")
  if ranges[0][0] != 1:
    raise ValueError(f"the first stage must start at block 1, got {ranges[0][0]}")
  return ranges


def parse_levels(text):
  return [int(v) for v in text.replace(" ", "").split(",") if v]


def make_stages(mode, num_levels, partition="", levels=""):
  """The stages of a run.

  Args:
    mode: one of MODES.
    num_levels: how many levels the task has (3 for every task of the paper).
    partition: block ranges like '1-3,2-4,3-5'; empty for the mode's default.
    levels: the level of each stage, like '1,2,3'; empty for the mode's default (stage k on
      level k in psl/psl_f/greedy, the top level in sl and e2e).

  Returns:
    A list of Stage.
  """
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
  if mode == "e2e" and partition and parse_partition(partition) != [(1, NUM_BLOCKS)]:
    raise ValueError("--mode=e2e trains all blocks in one stage; drop --stages or use another mode")
  ranges = parse_partition(partition or DEFAULT_PARTITIONS[mode])
  if levels:
    stage_levels = parse_levels(levels)
    if len(stage_levels) != len(ranges):
      raise ValueError(f"--levels gives {len(stage_levels)} levels for {len(ranges)} stages")
  elif mode in ("sl", "e2e"):
    stage_levels = [num_levels] * len(ranges)
  else:
    if len(ranges) > num_levels:
      raise ValueError(f"{len(ranges)} stages but the task has {num_levels} levels; "
                       "give each stage its level with --levels")
    # Fewer stages than levels: end on the hardest level, as the paper's stage 3 does.
    stage_levels = list(range(num_levels - len(ranges) + 1, num_levels + 1))
  for level in stage_levels:
    if not 1 <= level <= num_levels:
      raise ValueError(f"level {level} out of range 1..{num_levels}")
  return [Stage(index=i + 1, first=first, last=last, level=level,
                grad_first=1 if mode == "psl_f" else first)
          for i, ((first, last), level) in enumerate(zip(ranges, stage_levels))]
