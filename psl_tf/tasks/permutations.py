"""Maximal-Hamming permutation sets for the jigsaw ladder (paper 3.3.1).

Noroozi & Favaro (2016), Algorithm 1: start from one permutation of the 9 tiles, then
repeatedly add the candidate (among all 9! = 362,880) whose *average* Hamming distance to the
permutations already chosen is largest. The jigsaw levels C1 ⊂ C2 ⊂ C3 are prefixes of one
greedy sequence, so label i means the same permutation at every level.

Vectorised: the Hamming distance between permutations p and q is 9 minus the number of
positions where they agree. Each of the 9! candidates is encoded as 81 bits, one per (position,
value) pair it has, in two uint64 words; the agreements of p with every candidate are then two
ANDs and two popcounts over 362,880 words, added to a running count of agreements with the
chosen set. One greedy step is a few vector operations and an argmin, so 2,000 permutations
take seconds.

Ties are broken by a seeded random order of the candidates (the start permutation is the
first in that order), so a seed fixes the whole sequence and different seeds give different,
equally good sets. Sequences are cached on disk by (criterion, seed, size).
"""

import functools
import os
import tempfile

import numpy as np

NUM_TILES = 9
CRITERIA = ("average", "maxmin")
DEFAULT_SIZES = (500, 1000, 2000)
# Agreements with the chosen set are at most 9 per chosen permutation; this marks "taken".
_TAKEN = np.int32(2 ** 30)


@functools.lru_cache(maxsize=2)
def _all_permutations(num_tiles):
  if num_tiles == 1:
    return np.zeros((1, 1), np.uint8)
  # Lexicographic: for each first value k, the permutations of the other values in order.
  rest = _all_permutations(num_tiles - 1)
  blocks = []
  for k in range(num_tiles):
    block = np.empty((len(rest), num_tiles), np.uint8)
    block[:, 0] = k
    block[:, 1:] = rest + (rest >= k)
    blocks.append(block)
  return np.concatenate(blocks)


def all_permutations(num_tiles=NUM_TILES):
  """Every permutation of 0..num_tiles-1 as uint8 [num_tiles!, num_tiles], lexicographic."""
  return _all_permutations(num_tiles).copy()


def _bit_codes(candidates):
  """Two uint64 words per candidate; bit 9 * pos + value is set when it has value at pos."""
  bit = (np.arange(candidates.shape[1]) * NUM_TILES)[None, :] + candidates.astype(np.int64)
  low = np.zeros(len(candidates), np.uint64)
  high = np.zeros(len(candidates), np.uint64)
  for column in bit.T:
    in_low = column < 64
    low[in_low] |= np.left_shift(np.uint64(1), column[in_low].astype(np.uint64))
    high[~in_low] |= np.left_shift(np.uint64(1), (column[~in_low] - 64).astype(np.uint64))
  return low, high


@functools.lru_cache(maxsize=1)
def _lexicographic_codes():
  return _bit_codes(_all_permutations(NUM_TILES))


def _agreements(low, high, index, scratch, out):
  """out[k] = number of positions where candidate k agrees with candidate `index`."""
  np.bitwise_and(low, low[index], out=scratch)
  np.bitwise_count(scratch, out=out)
  np.bitwise_and(high, high[index], out=scratch)
  out += np.bitwise_count(scratch)
  return out


def greedy_sequence(size, seed=0, criterion="average"):
  """The first `size` permutations of the greedy maximal-Hamming sequence.

  Args:
    size: how many permutations to select (at most 9!).
    seed: fixes the tie-breaking order of the candidates and hence the start permutation.
    criterion: 'average' (Noroozi & Favaro: maximise the average Hamming distance to the
      chosen set) or 'maxmin' (maximise the minimum distance; ties go to the larger average).

  Returns:
    int64 array [size, 9]; row i is permutation i (position -> tile index).
  """
  if criterion not in CRITERIA:
    raise ValueError(f"permutation criterion must be one of {CRITERIA}, got {criterion!r}")
  rng = np.random.default_rng(seed)
  candidates = all_permutations()
  if not 1 <= size <= len(candidates):
    raise ValueError(f"a permutation set has 1..{len(candidates)} elements, got {size}")
  order = rng.permutation(len(candidates))
  low, high = (codes[order] for codes in _lexicographic_codes())
  candidates = candidates[order]
  scratch = np.empty_like(low)
  agree_new = np.empty(len(candidates), np.uint8)
  # agree[k]: summed agreements of candidate k with the chosen set (int32: <= 9 * size).
  agree = np.zeros(len(candidates), np.int32)
  nearest = np.full(len(candidates), NUM_TILES, np.int32)  # min distance (maxmin only)
  chosen = np.empty(size, np.int64)
  index = 0  # the first candidate of the seeded order starts the sequence
  for i in range(size):
    chosen[i] = index
    _agreements(low, high, index, scratch, agree_new)
    agree += agree_new
    agree[index] = _TAKEN
    if i + 1 == size:
      break
    if criterion == "average":
      index = int(np.argmin(agree))
    else:
      np.minimum(nearest, NUM_TILES - agree_new.astype(np.int32), out=nearest)
      nearest[index] = -1
      best = nearest.max()
      ties = np.flatnonzero(nearest == best)
      index = int(ties[np.argmin(agree[ties])])
  return candidates[chosen].astype(np.int64)


def default_cache_dir():
  """`$PSL_TF_CACHE` or `~/.cache/psl_tf`."""
  return os.environ.get("PSL_TF_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "psl_tf")


def _cache_name(size, seed, criterion):
  return f"jigsaw_permutations_{criterion}_seed{seed}_n{size}.npy"


def _valid(array, size):
  return (array.ndim == 2 and array.shape[1] == NUM_TILES and array.shape[0] >= size and
          np.array_equal(np.sort(array, axis=1), np.broadcast_to(np.arange(NUM_TILES),
                                                                 array.shape)))


def load_or_build(size, seed=0, criterion="average", cache_dir=None):
  """`greedy_sequence(size, seed, criterion)`, read from or written to a disk cache.

  A cached sequence of the same criterion and seed that is at least as long serves as well
  (the sequence is greedy, so shorter ones are its prefixes). Unreadable or malformed cache
  files are ignored and rebuilt. An unwritable cache directory only costs the rebuild.

  Args:
    size: number of permutations.
    seed: tie-breaking seed.
    criterion: 'average' or 'maxmin'.
    cache_dir: directory of the cache; None for `default_cache_dir()`, '' for no cache.

  Returns:
    int64 array [size, 9].
  """
  if cache_dir is None:
    cache_dir = default_cache_dir()
  if cache_dir and os.path.isdir(cache_dir):
    prefix = f"jigsaw_permutations_{criterion}_seed{seed}_n"
    lengths = []
    for name in os.listdir(cache_dir):
      if name.startswith(prefix) and name.endswith(".npy") and name[len(prefix):-4].isdigit():
        lengths.append(int(name[len(prefix):-4]))
    for length in sorted(n for n in lengths if n >= size):
      try:
        array = np.load(os.path.join(cache_dir, _cache_name(length, seed, criterion)))
      except (OSError, ValueError):
        continue
      if _valid(array, size):
        return array[:size].astype(np.int64)
  sequence = greedy_sequence(size, seed, criterion)
  if cache_dir:
    try:
      os.makedirs(cache_dir, exist_ok=True)
      # Write then rename, so a concurrent reader never sees half a file.
      fd, tmp = tempfile.mkstemp(suffix=".npy", dir=cache_dir)
      with os.fdopen(fd, "wb") as f:
        np.save(f, sequence)
      os.replace(tmp, os.path.join(cache_dir, _cache_name(size, seed, criterion)))
    except OSError:
      pass
  return sequence


def hamming_matrix(perms):
  """Pairwise Hamming distances, int32 [N, N]."""
  perms = np.asarray(perms)
  return (perms[:, None, :] != perms[None, :, :]).sum(axis=-1, dtype=np.int32)


def hamming_stats(perms, chunk=512):
  """(average, minimum) Hamming distance over all pairs of distinct rows of `perms`.

  Runs in row chunks so a 2000-row set needs a few MB, not a [N, N, 9] array.
  """
  perms = np.asarray(perms)
  n = len(perms)
  if n < 2:
    raise ValueError("Hamming statistics need at least two permutations")
  total, minimum = 0, NUM_TILES
  for start in range(0, n, chunk):
    block = (perms[start:start + chunk, None, :] != perms[None, :, :]).sum(-1, dtype=np.int32)
    rows = np.arange(block.shape[0])
    block[rows, start + rows] = NUM_TILES + 1  # exclude each row's distance to itself
    minimum = min(minimum, int(block.min()))
    block[rows, start + rows] = 0
    total += int(block.sum())
  return total / (n * (n - 1)), minimum


def check_sizes(sizes):
  """Raises ValueError unless `sizes` increase, start at 2 or more and end at most at 9!."""
  sizes = [int(s) for s in sizes]
  if (not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 2 or
      sizes[-1] > 362_880):
    raise ValueError("jigsaw set sizes must increase, from at least 2 to at most 9! = 362880, "
                     f"got {','.join(map(str, sizes))}")
  return sizes


def nested_sets(sizes, seed=0, criterion="average", cache_dir=None):
  """The levels' permutation sets as prefixes of one greedy sequence.

  Args:
    sizes: increasing set sizes, e.g. (500, 1000, 2000).
    seed, criterion, cache_dir: as in `load_or_build`.

  Returns:
    A list of int64 arrays, one per size; set k is the first sizes[k] rows of the last one.
  """
  sizes = check_sizes(sizes)
  sequence = load_or_build(sizes[-1], seed, criterion, cache_dir)
  return [sequence[:s] for s in sizes]
