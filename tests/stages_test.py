"""Stage partitions for every mode, and the errors for bad ones."""

import pytest

from psl_tf import stages


def _summary(stage_list):
  return [(s.first, s.last, s.level, s.grad_first) for s in stage_list]


@pytest.mark.parametrize("mode, expected", [
    ("psl", [(1, 3, 1, 1), (2, 4, 2, 2), (3, 5, 3, 3)]),
    ("sl", [(1, 3, 3, 1), (2, 4, 3, 2), (3, 5, 3, 3)]),
    ("psl_f", [(1, 3, 1, 1), (2, 4, 2, 1), (3, 5, 3, 1)]),
    ("e2e", [(1, 5, 3, 1)]),
    ("greedy", [(1, 2, 1, 1), (3, 4, 2, 3), (5, 5, 3, 5)]),
])
def test_default_partition_of_each_mode(mode, expected):
  assert _summary(stages.make_stages(mode, num_levels=3)) == expected


def test_trained_and_frozen_blocks():
  s2 = stages.make_stages("psl", 3)[1]
  assert s2.trained_blocks == (2, 3, 4) and s2.frozen_blocks == (1,)
  f2 = stages.make_stages("psl_f", 3)[1]
  assert f2.trained_blocks == (1, 2, 3, 4) and f2.frozen_blocks == ()


def test_custom_partition_and_levels():
  got = stages.make_stages("psl", 3, partition="1-2,2-5", levels="2,3")
  assert _summary(got) == [(1, 2, 2, 1), (2, 5, 3, 2)]
  # Fewer stages than levels end on the hardest level.
  assert [s.level for s in stages.make_stages("psl", 3, partition="1-3,3-5")] == [2, 3]


@pytest.mark.parametrize("partition, message", [
    ("1-3,x", "not a block range"),
    ("1-6", "1 <= first <= last <= 5"),
    ("2-4,3-5", "must start at block 1"),
    ("1-3,1-3", "move up the network"),
    ("1-2,4-5", "never be trained"),
])
def test_bad_partitions_say_why(partition, message):
  with pytest.raises(ValueError, match=message):
    stages.make_stages("psl", 3, partition=partition)


def test_other_errors():
  with pytest.raises(ValueError, match="unknown mode 'psl2'"):
    stages.make_stages("psl2", 3)
  with pytest.raises(ValueError, match="e2e trains all blocks"):
    stages.make_stages("e2e", 3, partition="1-3,3-5")
  with pytest.raises(ValueError, match="--levels"):
    stages.make_stages("psl", 3, partition="1-2,2-3,3-4,4-5")
  with pytest.raises(ValueError, match="2 levels for 3 stages"):
    stages.make_stages("psl", 3, levels="1,2")
