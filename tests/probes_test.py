"""Pooling to ~9,000 values, linear probes on all blocks, and their metrics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_tf.evaluation import metrics
from psl_tf.evaluation import pooling
from psl_tf.evaluation import probes
from psl_tf.data import views
from psl_tf.models import build_backbone

GOYAL = {"b1": (10, 10, 4, 9216), "b2": (16, 8, 0, 9216), "b3": (13, 5, 0, 8192),
         "b4": (8, 3, 0, 9216), "b5": (6, 1, 0, 8192)}


def _block_shapes(backbone, size):
  maps = backbone(np.zeros((1, size, size, 3), np.float32), training=False)
  return {name: tuple(m.shape[1:]) for name, m in maps.items()}


def test_resnet50_at_224_uses_goyal_kernels_and_sizes():
  backbone = build_backbone("resnet50")
  model, poolings = probes.build_probe_model(backbone, 224, num_classes=10)
  for name, (k, s, p, size) in GOYAL.items():
    assert poolings[name] == pooling.Pooling(k, s, p), name
    # The probe's own layers give that many values (the Dense kernel's input size).
    assert model.get_layer(f"{name}_linear").kernel.shape[0] == size, name


def test_derived_rule_reproduces_goyal_res2_to_res4():
  shapes = {"b2": (56, 256), "b3": (28, 512), "b4": (14, 1024)}
  for name, (side, channels) in shapes.items():
    k, s, p, size = GOYAL[name]
    derived = pooling.derive_pooling(side, channels, use_reference=False)
    assert derived == pooling.Pooling(k, s, p), name
    assert pooling.pooled_size((side, side, channels), derived) == size


@pytest.mark.parametrize("backbone_name,kwargs,size", [
    ("cifar_resnet", {"depth": 18, "width": 64}, 32),
    ("cifar_resnet", {"depth": 18, "width": 64}, 64),
    ("cifar_resnet", {"depth": 10, "width": 32}, 64),
    ("resnet50", {}, 96),
    ("resnet50", {}, 128),
])
def test_derived_pooling_stays_near_9000(backbone_name, kwargs, size):
  shapes = _block_shapes(build_backbone(backbone_name, **kwargs), size)
  for name, shape in shapes.items():
    rule = pooling.derive_pooling(shape[0], shape[2])
    values = pooling.pooled_size(shape, rule)
    whole = shape[0] * shape[1] * shape[2]
    assert rule.output_side(shape[0]) >= 1
    # Near 9,000, unless the whole map is smaller (then it is kept whole).
    assert 0.5 * min(9000, whole) <= values <= 1.5 * 9000, (name, shape, rule, values)
    if whole <= 9000:
      assert values == whole


def test_pooling_layers_match_the_rule_on_real_tensors():
  for shape in [(112, 112, 64), (33, 33, 48), (7, 7, 2048), (4, 4, 512), (5, 9, 16)]:
    rule, stack = pooling.pooling_layers(shape)
    x = tf.zeros((2,) + shape)
    for layer in stack:
      x = layer(x)
    assert x.shape[1] == pooling.pooled_size((min(shape[:2]),) * 2 + shape[2:], rule) or \
        shape[0] != shape[1]
    if shape[0] == shape[1]:
      assert x.shape[1] == pooling.pooled_size(shape, rule)


def _toy(n, seed, shuffled=False, num_classes=4, size=16):
  """Images whose class decides the dominant colour channel pattern; noisy otherwise."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  palette = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], np.float32)
  images = palette[labels][:, None, None, :] + rng.normal(0, 10, (n, size, size, 3))
  images = np.clip(images, 0, 255).astype(np.float32) / 255.0
  if shuffled:
    labels = rng.permutation(labels)
  return images, labels.astype(np.int64)


def _small_backbone():
  keras.utils.set_random_seed(0)
  return build_backbone("cifar_resnet", depth=10, width=8)


@pytest.mark.parametrize("shuffled", [False, True])
def test_probes_learn_separable_toy_and_stay_at_chance_on_shuffled(shuffled):
  backbone = _small_backbone()
  before = probes.backbone_snapshot(backbone)
  train_x, train_y = _toy(256, 1, shuffled)
  test_x, test_y = _toy(400, 2, shuffled)
  results, _ = probes.linear_probe(
      backbone, probes.tf_dataset_from_arrays(train_x, train_y, 32, True),
      probes.tf_dataset_from_arrays(test_x, test_y, 100, False), num_classes=4, image_size=16,
      epochs=8, steps_per_epoch=16, learning_rate=0.05, lr_step_split="3,1")
  top1 = [results[b]["top1"] for b in ("b1", "b2", "b3", "b4", "b5")]
  if shuffled:
    assert max(top1) < 40.0, top1  # chance is 25%
  else:
    assert min(top1) > 90.0, top1
  # The frozen backbone, BatchNorm moving statistics included, is bit-identical.
  after = probes.backbone_snapshot(backbone)
  assert len(before) == len(after)
  for a, b in zip(before, after):
    np.testing.assert_array_equal(a, b)


def test_probe_model_trains_only_heads():
  backbone = _small_backbone()
  model, _ = probes.build_probe_model(backbone, 16, 3, ("b2", "b5"))
  trainable = {v.path.split("/")[0] for v in model.trainable_variables}
  assert trainable == {"b2_linear", "b5_linear"}
  with pytest.raises(ValueError, match="probe blocks"):
    probes.build_probe_model(backbone, 16, 3, ("b6",))


def test_topk_accuracy_against_counting():
  scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [1, 1, 1]])
  labels = np.array([1, 2, 0, 0])
  assert metrics.topk_accuracy(scores, labels, 1) == 0.25
  assert metrics.topk_accuracy(scores, labels, 2) == 0.5
  assert metrics.topk_accuracy(scores, labels, 5) == 1.0


def test_average_precision_against_definition():
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
  targets = np.array([1, 0, 1, 0, 1])
  # Precision at each positive: 1/1, 2/3, 3/5.
  assert metrics.average_precision(scores, targets) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
  two = np.stack([scores, -scores], 1)
  both = np.stack([targets, np.array([0, 0, 0, 0, 1])], 1)
  assert metrics.mean_average_precision(two, both) == pytest.approx(
      ((1 + 2 / 3 + 3 / 5) / 3 + 1.0) / 2)


def test_views_same_eagerly_and_in_tf_data():
  image = tf.constant(np.random.default_rng(0).integers(0, 255, (40, 50, 3)), tf.uint8)
  seed = tf.constant([3, 4], tf.int64)
  for fn in (views.train_view_fn(24, 28), views.eval_view_fn(24, 28)):
    eager, label = fn(image, tf.constant(7, tf.int64), seed)
    ds = tf.data.Dataset.from_tensors((image, tf.constant(7, tf.int64), seed)).map(fn)
    graph, graph_label = next(iter(ds))
    assert eager.shape == (24, 24, 3) and int(label) == 7 == int(graph_label)
    np.testing.assert_allclose(eager.numpy(), graph.numpy(), atol=1e-6)
  # Different seeds give different training crops; the eval view ignores the seed.
  train = views.train_view_fn(24, 28)
  a = train(image, 0, tf.constant([1, 1], tf.int64))[0]
  b = train(image, 0, tf.constant([1, 2], tf.int64))[0]
  c = train(image, 0, tf.constant([5, 9], tf.int64))[0]
  assert not (np.array_equal(a, b) and np.array_equal(a, c))


@pytest.mark.parametrize("shuffled", [False, True])
def test_probes_on_stored_features_learn_separable_toy_and_stay_at_chance_on_shuffled(shuffled):
  backbone = _small_backbone()
  before = probes.backbone_snapshot(backbone)
  train_x, train_y = _toy(256, 1, shuffled)
  test_x, test_y = _toy(400, 2, shuffled)
  results, poolings = probes.linear_probe_on_features(
      backbone, probes.tf_dataset_from_arrays(train_x, train_y, 64, False),
      probes.tf_dataset_from_arrays(test_x, test_y, 100, False), num_classes=4, image_size=16,
      epochs=12, batch_size=32, learning_rate=0.05, lr_step_split="3,1", num_train=256)
  top1 = [results[b]["top1"] for b in ("b1", "b2", "b3", "b4", "b5")]
  if shuffled:
    assert max(top1) < 40.0, top1  # chance is 25%
  else:
    assert min(top1) > 90.0, top1
    # The training curve is recorded per epoch, and ends high on separable data.
    assert all(len(results[b]["train_curve"]) == 12 for b in results)
    assert min(results[b]["train_curve"][-1] for b in results) > 90.0
  assert set(poolings) == set(results)
  for a, b in zip(before, probes.backbone_snapshot(backbone)):
    np.testing.assert_array_equal(a, b)


def test_stored_features_are_the_probe_models_pooled_inputs():
  backbone = _small_backbone()
  images = np.random.default_rng(3).uniform(size=(10, 16, 16, 3)).astype(np.float32)
  extract, _ = probes.feature_extractor(backbone, 16)
  dataset = probes.tf_dataset_from_arrays(images, np.arange(10), 4, False)
  allocated, labels = probes.extract_features(extract, dataset, num_examples=10)
  appended, _ = probes.extract_features(extract, dataset)
  np.testing.assert_array_equal(labels, np.arange(10))
  model, _ = probes.build_probe_model(backbone, 16, 3)
  sizes = probes.feature_sizes(backbone, 16)
  for name in sizes:
    assert allocated[name].dtype == probes.FEATURE_DTYPE
    np.testing.assert_array_equal(allocated[name], appended[name])
    # The same pooled vector the image-fed probe's linear layer sees.
    assert allocated[name].shape == (10, sizes[name])
    assert model.get_layer(f"{name}_linear").kernel.shape[0] == sizes[name]
    pooled = keras.Model(model.input, model.get_layer(f"{name}_pool_flat").output)(images)
    np.testing.assert_allclose(allocated[name], np.asarray(pooled), rtol=2e-3, atol=2e-3)


def test_non_finite_backbone_features_are_refused():
  backbone = _small_backbone()
  kernel = next(v for v in backbone.weights if "kernel" in v.path)
  kernel.assign(np.full(kernel.shape, np.nan, np.float32))
  extract, _ = probes.feature_extractor(backbone, 16)
  images = np.zeros((4, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match="non-finite"):
    probes.extract_features(extract, probes.tf_dataset_from_arrays(images, np.arange(4), 4,
                                                                   False))


def _stored_toy(n, dims, seed, signal):
  """{block: float16 features}, labels: b1's first dimension carries the class, b2 is noise."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % 2).astype(np.int64)
  b1 = rng.normal(size=(n, dims)).astype(np.float32)
  b1[:, 0] += signal * (2 * labels - 1)
  b2 = rng.normal(size=(n, dims)).astype(np.float32)
  return {"b1": b1.astype(np.float16), "b2": b2.astype(np.float16)}, labels


def test_heads_sharing_a_block_learn_what_each_would_learn_alone():
  features, labels = _stored_toy(96, 6, 0, 2.0)
  sizes = {k: v.shape[1] for k, v in features.items()}
  alone = probes.build_feature_heads(sizes, 2, 1e-2)
  together = probes.build_feature_heads(sizes, 2, (1e-3, 1e-2))
  assert set(together.output) == {"b1@wd=0.001", "b1@wd=0.01", "b2@wd=0.001", "b2@wd=0.01"}
  # The heads of a block sit side by side in one layer: columns 2..3 are the 1e-2 head.
  wd01 = slice(2, 4)
  for block in sizes:  # the same starting point for the 1e-2 heads
    kernel, bias = together.get_layer(f"{block}_linear").get_weights()
    assert kernel.shape == (sizes[block], 4)
    kernel[:, wd01], bias[wd01] = alone.get_layer(f"{block}_linear").get_weights()
    together.get_layer(f"{block}_linear").set_weights([kernel, bias])
  for model in (alone, together):
    probes.train_feature_heads(model, features, labels, epochs=3, batch_size=16,
                               learning_rate=0.1, lr_step_split="2,1", seed=4)
  for block in sizes:
    kernel, bias = together.get_layer(f"{block}_linear").get_weights()
    for a, b in zip(alone.get_layer(f"{block}_linear").get_weights(),
                    (kernel[:, wd01], bias[wd01])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_heads_side_by_side_start_and_are_penalised_as_separate_layers():
  reg = probes.GroupedL2((1e-3, 1e-1), 3)
  kernel = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  want = sum(keras.regularizers.L2(wd / 2)(kernel[:, k * 3:(k + 1) * 3])
             for k, wd in enumerate((1e-3, 1e-1)))
  np.testing.assert_allclose(float(reg(tf.constant(kernel))), float(want), rtol=1e-6)
  # Each group is Glorot-uniform for a [fan_in, 3] layer: limit sqrt(6 / (fan_in + 3)).
  init = probes.GroupedInitializer(3)(shape=(2000, 12))
  limit = np.sqrt(6 / (2000 + 3))
  for k in range(4):
    group = init.numpy()[:, k * 3:(k + 1) * 3]
    assert np.abs(group).max() <= limit and np.abs(group).max() > 0.95 * limit
    np.testing.assert_allclose(group.std(), limit / np.sqrt(3), rtol=0.05)
  assert not np.array_equal(init.numpy()[:, :3], init.numpy()[:, 3:6])  # separate draws


def test_weight_decay_is_chosen_per_block_on_held_out_training_rows_only():
  features, labels = _stored_toy(200, 4, 1, 3.0)
  sizes = {k: v.shape[1] for k, v in features.items()}
  decays = (1e-4, 1.0)
  model = probes.build_feature_heads(sizes, 2, decays)
  order = np.random.default_rng(0).permutation(200)
  fit, val = np.sort(order[:120]), np.sort(order[120:])
  history = probes.train_feature_heads(model, features, labels, epochs=6, batch_size=20,
                                       learning_rate=0.1, lr_step_split="1", rows=fit)
  assert set(history) == set(model.output) and all(len(h) == 6 for h in history.values())
  chosen, table = probes.select_weight_decays(model, features, labels, val, decays)
  scores = probes.predict_features(model, features, rows=val)
  for block in sizes:
    by_decay = {wd: probes.score(scores[f"{block}@wd={wd:g}"], labels[val])["top1"]
                for wd in decays}
    assert table[block] == {f"{wd:g}": v for wd, v in by_decay.items()}
    best = max(by_decay.values())
    assert chosen[block] == min(wd for wd, v in by_decay.items() if v == best)
  assert table["b1"][f"{chosen['b1']:g}"] > 90.0  # b1 carries the class, b2 is noise
  # Only the validation rows are scored: flipping every training label changes nothing.
  flipped = labels.copy()
  flipped[fit] = 1 - flipped[fit]
  assert probes.select_weight_decays(model, features, flipped, val, decays) == (chosen, table)


def test_probe_on_features_reports_the_chosen_decay_and_trains_it_on_all_rows():
  backbone = _small_backbone()
  train_x, train_y = _toy(200, 1)
  test_x, test_y = _toy(100, 2)
  results, _ = probes.linear_probe_on_features(
      backbone, probes.tf_dataset_from_arrays(train_x, train_y, 50, False),
      probes.tf_dataset_from_arrays(test_x, test_y, 50, False), num_classes=4, image_size=16,
      epochs=4, batch_size=32, learning_rate=0.05, weight_decay=(5e-4, 1e-2),
      lr_step_split="3,1", num_train=200, block_names=("b1", "b5"))
  for block in ("b1", "b5"):
    val = results[block]["val_by_weight_decay"]
    assert set(val) == {"0.0005", "0.01"}
    assert results[block]["weight_decay"] == min(
        (wd for wd in (5e-4, 1e-2) if val[f"{wd:g}"] == max(val.values())))
    assert len(results[block]["train_curve"]) == 4 and results[block]["top1"] > 50.0  # chance 25
  with pytest.raises(ValueError, match="validation part"):
    probes.linear_probe_on_features(
        backbone, probes.tf_dataset_from_arrays(train_x, train_y, 50, False),
        probes.tf_dataset_from_arrays(test_x, test_y, 50, False), num_classes=4,
        image_size=16, epochs=1, batch_size=32, weight_decay=(5e-4, 1e-2), val_fraction=0.0,
        block_names=("b1",))


def test_weight_decay_lists_are_parsed_or_refused_in_one_line():
  assert probes.parse_weight_decays(["5e-4", "0.05"]) == (5e-4, 0.05)
  assert probes.parse_weight_decays([]) == ()
  for bad in (["x"], ["-1"], ["nan"], ["2"], ["0.1", "1e-1"]):
    with pytest.raises(ValueError, match="--probe_weight_decays"):
      probes.parse_weight_decays(bad)


@pytest.mark.parametrize("batch", [7, 256])
def test_feature_norm_is_keras_batchnorm_without_affine(batch):
  # The fused kernel gives the same outputs, input gradients and moving statistics as Keras'
  # layer (including the last, partial batch of an epoch), in training and inference.
  rng = np.random.default_rng(batch)
  xs = [tf.constant(rng.normal(2.0, 3.0, size=(batch, 40)).astype(np.float32))
        for _ in range(3)]
  weights = tf.constant(rng.normal(size=(batch, 40)).astype(np.float32))
  ours = probes.FeatureNorm()
  ref = keras.layers.BatchNormalization(center=False, scale=False)
  for layer in (ours, ref):
    layer.build((None, 40))
  assert [v.path.split("/")[-1] for v in ours.weights] == [
      v.path.split("/")[-1] for v in ref.weights]
  for x in xs:
    outs = []
    for layer in (ours, ref):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * weights)
      outs.append((y.numpy(), tape.gradient(loss, x).numpy()))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)
  for a, b in zip(ours.weights, ref.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  assert not np.allclose(ours.moving_mean.numpy(), 0.0)  # the statistics did move
  np.testing.assert_allclose(ours(xs[0], training=False), ref(xs[0], training=False),
                             rtol=1e-5, atol=1e-5)
