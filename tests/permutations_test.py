"""Maximal-Hamming permutation sets: shape, validity, nesting, determinism, the greedy rule
itself, the Hamming statistics and the disk cache."""

import itertools
import math
import os

import numpy as np
import pytest

from psl_tf.tasks import permutations as perms


def _is_permutation_rows(array):
  return np.array_equal(np.sort(array, axis=1), np.broadcast_to(np.arange(9), array.shape))


def test_all_permutations_are_the_9_factorial_distinct_ones():
  candidates = perms.all_permutations()
  assert candidates.shape == (math.factorial(9), 9)
  assert _is_permutation_rows(candidates)
  assert len(np.unique(candidates, axis=0)) == len(candidates)
  np.testing.assert_array_equal(perms.all_permutations(5),
                                np.array(list(itertools.permutations(range(5)))))


@pytest.mark.parametrize("criterion", perms.CRITERIA)
def test_nested_sets_sizes_validity_and_prefixes(criterion, tmp_path):
  sets = perms.nested_sets((30, 60, 120), seed=3, criterion=criterion, cache_dir=str(tmp_path))
  assert [s.shape for s in sets] == [(30, 9), (60, 9), (120, 9)]
  for s in sets:
    assert s.dtype == np.int64
    assert _is_permutation_rows(s)
    assert len(np.unique(s, axis=0)) == len(s)  # no duplicate rows
  np.testing.assert_array_equal(sets[1][:30], sets[0])
  np.testing.assert_array_equal(sets[2][:60], sets[1])


def test_same_seed_same_set_other_seed_other_set():
  a = perms.greedy_sequence(50, seed=7)
  b = perms.greedy_sequence(50, seed=7)
  c = perms.greedy_sequence(50, seed=8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_greedy_rule_maximises_the_average_distance_at_every_step():
  # Noroozi & Favaro's Algorithm 1, checked by brute force over all 9! candidates.
  sequence = perms.greedy_sequence(12, seed=1)
  candidates = perms.all_permutations().astype(np.int64)
  codes = candidates @ (9 ** np.arange(9))
  for i in range(1, len(sequence)):
    total = sum((candidates != row).sum(axis=1) for row in sequence[:i])
    taken = np.isin(codes, sequence[:i] @ (9 ** np.arange(9)))
    best = np.where(taken, -1, total).max()
    got = (sequence[:i] != sequence[i]).sum()
    assert got == best, f"step {i}: chose distance sum {got}, best is {best}"


def test_maxmin_criterion_keeps_a_larger_minimum_distance():
  average = perms.greedy_sequence(200, seed=0, criterion="average")
  maxmin = perms.greedy_sequence(200, seed=0, criterion="maxmin")
  avg_a, min_a = perms.hamming_stats(average)
  avg_m, min_m = perms.hamming_stats(maxmin)
  assert min_m > min_a
  assert min_m >= 5
  assert avg_m > 7.9 and avg_a > 7.9


def test_hamming_stats_match_brute_force():
  rng = np.random.default_rng(0)
  rows = np.array([rng.permutation(9) for _ in range(40)])
  rows[5] = rows[3]  # a duplicate pair has distance 0
  matrix = np.array([[np.sum(a != b) for b in rows] for a in rows])
  off_diagonal = matrix[~np.eye(len(rows), dtype=bool)]
  average, minimum = perms.hamming_stats(rows, chunk=7)
  assert average == pytest.approx(off_diagonal.mean())
  assert minimum == 0
  np.testing.assert_array_equal(perms.hamming_matrix(rows), matrix)


def test_the_1000_set_has_average_hamming_distance_near_8(tmp_path):
  sequence = perms.load_or_build(1000, seed=0, cache_dir=str(tmp_path))
  average, minimum = perms.hamming_stats(sequence)
  assert 7.9 <= average <= 8.1
  assert minimum >= 1


def test_cache_is_written_read_and_serves_prefixes(tmp_path, monkeypatch):
  cache = str(tmp_path)
  built = perms.load_or_build(40, seed=2, cache_dir=cache)
  assert os.listdir(cache) == ["jigsaw_permutations_average_seed2_n40.npy"]

  def no_build(*args, **kwargs):
    raise AssertionError("rebuilt although the cache holds the sequence")
  monkeypatch.setattr(perms, "greedy_sequence", no_build)
  np.testing.assert_array_equal(perms.load_or_build(40, seed=2, cache_dir=cache), built)
  np.testing.assert_array_equal(perms.load_or_build(25, seed=2, cache_dir=cache), built[:25])
  with pytest.raises(AssertionError):  # other parameters are not served from this file
    perms.load_or_build(40, seed=3, cache_dir=cache)


def test_a_corrupt_cache_file_is_rebuilt(tmp_path):
  cache = str(tmp_path)
  good = perms.greedy_sequence(20, seed=0)
  np.save(os.path.join(cache, "jigsaw_permutations_average_seed0_n20.npy"), np.zeros((20, 9)))
  np.testing.assert_array_equal(perms.load_or_build(20, seed=0, cache_dir=cache), good)


@pytest.mark.parametrize("sizes", [(10, 10, 20), (1, 5, 9), (5, 3), (), (10, 20, 400_000)])
def test_bad_sizes_are_refused(sizes):
  with pytest.raises(ValueError, match="jigsaw set sizes"):
    perms.check_sizes(sizes)


def test_bad_criterion_is_refused():
  with pytest.raises(ValueError, match="criterion"):
    perms.greedy_sequence(10, criterion="median")
