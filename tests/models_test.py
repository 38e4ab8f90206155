"""Backbones keep the b1..b5 contract: shapes, parameter count, sub-model names."""

import numpy as np
import pytest

from psl_tf import models
from psl_tf.models import blocks


def test_resnet50_block_shapes_and_parameter_count():
  backbone = models.build_backbone("resnet50", input_shape=(224, 224, 3))
  shapes = {name: tuple(t.shape[1:]) for name, t in backbone.output.items()}
  assert shapes == {"b1": (112, 112, 64), "b2": (56, 56, 256), "b3": (28, 28, 512),
                    "b4": (14, 14, 1024), "b5": (7, 7, 2048)}
  # He et al.'s ResNet-50 without the classifier; convolutions carry no bias before BN.
  assert backbone.count_params() == 23_561_152
  assert [b.name for b in blocks.get_blocks(backbone)] == list(blocks.BLOCK_NAMES)


def test_resnet50_maxpool_is_in_b2():
  backbone = models.build_backbone("resnet50")
  names = lambda block: [l.name for l in backbone.get_layer(block).layers]
  assert "pool1" in names("b2") and "pool1" not in names("b1")


@pytest.mark.parametrize("depth", [10, 18])
def test_cifar_resnet_shapes(depth):
  backbone = models.build_backbone("cifar_resnet", depth=depth, width=8,
                                   input_shape=(32, 32, 3))
  shapes = [tuple(backbone.output[n].shape[1:]) for n in blocks.BLOCK_NAMES]
  assert shapes == [(32, 32, 8), (32, 32, 8), (16, 16, 16), (8, 8, 32), (4, 4, 64)]


def test_blocks_chain_to_the_full_model():
  backbone = models.build_backbone("cifar_resnet", depth=10, width=8)
  x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
  full = backbone(x, training=False)
  chained = blocks.run_blocks(blocks.get_blocks(backbone), x, 1, 5, training=False)
  np.testing.assert_allclose(full["b5"], chained, rtol=1e-5, atol=1e-5)


def test_unknown_backbone_names_the_known_ones():
  with pytest.raises(ValueError, match="known: .*resnet50"):
    models.build_backbone("resnet51")


def test_recalibrate_batch_norm_averages_batch_statistics_through_nested_frozen_layers():
  import keras  # pylint: disable=g-import-not-at-top
  inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="bn1")])
  model = keras.Sequential([keras.Input((4,)), inner,
                            keras.layers.Dense(4, name="mix"),
                            keras.layers.BatchNormalization(momentum=0.9, name="bn2")])
  model.trainable = False  # frozen, as a probed backbone is
  rng = np.random.default_rng(0)
  batches = [rng.normal([1.0, -2.0, 0.5, 3.0], [1.0, 2.0, 0.5, 3.0], (64, 4)).astype("float32")
             for _ in range(3)]
  used = blocks.recalibrate_batch_norm(model, batches)
  assert used == 3
  bn1, bn2 = inner.get_layer("bn1"), model.get_layer("bn2")
  # The plain average of the three batches' statistics, not a momentum-weighted one.
  np.testing.assert_allclose(bn1.moving_mean, np.mean([b.mean(0) for b in batches], 0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn1.moving_variance, np.mean([b.var(0) for b in batches], 0),
                             rtol=1e-3, atol=1e-5)
  # The layer above sees its input normalised with the batch's own statistics.
  mix = model.get_layer("mix")
  inputs = [mix((b - b.mean(0)) / np.sqrt(b.var(0) + bn1.epsilon)).numpy() for b in batches]
  np.testing.assert_allclose(bn2.moving_mean, np.mean([x.mean(0) for x in inputs], 0),
                             rtol=1e-3, atol=1e-4)
  # Flags restored: still frozen, momentum as configured.
  assert not bn1.trainable and not bn2.trainable and bn2.momentum == 0.9
  with pytest.raises(ValueError, match="no batches"):
    blocks.recalibrate_batch_norm(model, [])
