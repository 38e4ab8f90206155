"""LARS against its update formula computed by hand in NumPy."""

import keras
import numpy as np
import pytest

from psl_tf import optim


def numpy_lars(w, g, v, lr, mu, wd, eta, adapted):
  """One LARS step; returns (new w, new v)."""
  if adapted:
    g = g + wd * w
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
    lr = lr * trust
  v = mu * v + lr * g
  return w - v, v


def test_two_steps_match_formula_and_excluded_get_plain_momentum_sgd():
  rng = np.random.default_rng(0)
  kernel0 = rng.normal(size=(4, 3)).astype(np.float32)
  bias0 = rng.normal(size=(3,)).astype(np.float32)
  kernel = keras.Variable(kernel0)
  bias = keras.Variable(bias0)
  lr, mu, wd, eta = 0.3, 0.9, 1e-2, 0.001
  opt = optim.LARS(lr, momentum=mu, weight_decay_rate=wd, trust_coefficient=eta)
  opt.build([kernel, bias])
  w_k, v_k = kernel0.astype(np.float64), np.zeros_like(kernel0, np.float64)
  w_b, v_b = bias0.astype(np.float64), np.zeros_like(bias0, np.float64)
  for _ in range(2):
    g_k = rng.normal(size=kernel0.shape).astype(np.float32)
    g_b = rng.normal(size=bias0.shape).astype(np.float32)
    opt.apply([g_k, g_b], [kernel, bias])
    w_k, v_k = numpy_lars(w_k, g_k, v_k, lr, mu, wd, eta, adapted=True)
    w_b, v_b = numpy_lars(w_b, g_b, v_b, lr, mu, wd, eta, adapted=False)
    np.testing.assert_allclose(kernel.numpy(), w_k, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias.numpy(), w_b, rtol=1e-5, atol=1e-7)
  # The bias really is plain momentum SGD: no decay, no trust ratio.
  assert not np.allclose(w_b, numpy_lars(bias0, g_b, np.zeros(3), lr, mu, wd, eta, True)[0])


def test_zero_weights_use_trust_one():
  kernel = keras.Variable(np.zeros((2, 2), np.float32))
  opt = optim.LARS(0.5, momentum=0.0)
  opt.build([kernel])
  g = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
  opt.apply([g], [kernel])
  np.testing.assert_allclose(kernel.numpy(), -0.5 * g, rtol=1e-6)


def test_build_optimizer_lars_takes_weight_decay_and_handles_it():
  opt = optim.build_optimizer("lars", 0.3, momentum=0.9, weight_decay=1e-6)
  assert isinstance(opt, optim.LARS)
  assert opt.weight_decay_rate == pytest.approx(1e-6)
  assert opt.handles_weight_decay
  assert not getattr(optim.build_optimizer("sgd", 0.1, 0.9), "handles_weight_decay", False)
  with pytest.raises(ValueError, match="lars"):
    optim.build_optimizer("nope", 0.1)


def test_lars_follows_a_warmup_cosine_schedule():
  schedule = optim.make_schedule("cosine", 0.3, 10, warmup_steps=2)
  kernel = keras.Variable(np.ones((2, 2), np.float32))
  bias = keras.Variable(np.ones((2,), np.float32))
  opt = optim.LARS(schedule, momentum=0.0)
  opt.build([kernel, bias])
  g = np.ones((2,), np.float32)
  before = bias.numpy().copy()
  opt.apply([np.ones((2, 2), np.float32), g], [kernel, bias])
  # Step 0 of the warm-up has learning rate 0: nothing moves.
  np.testing.assert_allclose(bias.numpy(), before)
  opt.apply([np.ones((2, 2), np.float32), g], [kernel, bias])
  np.testing.assert_allclose(bias.numpy(), before - float(schedule(1)) * g, rtol=1e-6)
