"""Evaluation metrics on whole evaluation sets, in NumPy: top-k accuracy and mean AP."""

import numpy as np


def topk_accuracy(scores, labels, k):
  """Fraction of rows whose label is among the `k` highest scores.

  Args:
    scores: [N, C] class scores (logits, probabilities or votes).
    labels: [N] integer labels.
    k: how many top classes count; capped at C (so top-5 of 3 classes is 1.0).
  """
  scores = np.asarray(scores)
  labels = np.asarray(labels).reshape(-1)
  if scores.shape[0] != labels.shape[0]:
    raise ValueError(f"{scores.shape[0]} score rows for {labels.shape[0]} labels")
  if scores.shape[0] == 0:
    raise ValueError("no examples to evaluate")
  k = min(k, scores.shape[1])
  # A row with any non-finite score (a diverged model) is wrong, never right: NaN compares
  # false with everything, so without this its rank would be 0 and it would count as a hit.
  finite = np.all(np.isfinite(scores), axis=1)
  # Ties are broken against the true class: it counts only if fewer than k classes beat or
  # equal it, so a constant score never looks right.
  true = scores[np.arange(len(labels)), labels]
  rank = np.sum(scores >= true[:, None], axis=1)  # includes the true class itself
  return float(np.mean((rank <= k) & finite))


def average_precision(scores, targets):
  """Non-interpolated average precision of one class (the area under the precision-recall
  steps): mean precision at the rank of every positive. NaN when there is no positive.

  Non-finite scores count as wrong: they rank below every finite score, and among them the
  positives come last, so a diverged model gets the lowest AP its scores allow."""
  scores = np.asarray(scores, np.float64)
  targets = np.asarray(targets) > 0
  positives = int(targets.sum())
  if positives == 0:
    return float("nan")
  finite = np.isfinite(scores)
  # np.lexsort sorts by the last key first: finite scores first (descending, stable), then the
  # non-finite ones with negatives before positives.
  order = np.lexsort((np.arange(len(scores)), ~finite & targets,
                      -np.where(finite, scores, 0.0), ~finite))
  hits = targets[order]
  precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
  return float(precision_at[hits].sum() / positives)


def mean_average_precision(scores, targets):
  """Mean over classes with at least one positive of `average_precision` (VOC07 mAP).

  Args:
    scores: [N, C] scores.
    targets: [N, C] multi-hot {0, 1} targets.
  """
  scores, targets = np.asarray(scores), np.asarray(targets)
  if scores.shape != targets.shape:
    raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
  aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
  aps = [a for a in aps if not np.isnan(a)]
  if not aps:
    raise ValueError("no class has a positive example; cannot compute mAP")
  return float(np.mean(aps))
