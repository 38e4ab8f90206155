"""Backbones as five functional sub-models b1..b5, and the table that builds them by name."""

from __future__ import annotations

from typing import Any, Callable

import keras

from psl_tf import keras_private
from psl_tf.models import blocks
from psl_tf.models import resnet
from psl_tf.models import revnet
from psl_tf.models.blocks import BLOCK_NAMES, get_blocks, run_blocks

# name -> builder(**kwargs). Explicit, so an unknown name can list the known ones.
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "resnet50": resnet.resnet50,
    "cifar_resnet": resnet.cifar_resnet,
    "revnet50": revnet.revnet50,
}


def backbone_builder(name: str) -> Callable[..., keras.Model]:
  """The registered builder of `name`; raises ValueError naming the known ones."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name]


def portable_backbone(backbone: keras.Model) -> keras.Model:
  """`backbone` as a model of Keras' built-in layers only, with the same weights and outputs:
  what `backbone.keras` holds, so that `keras.saving.load_model` reads it without psl_tf.

  The ResNets are built that way already; a RevNet (custom layers for its reversible units and
  their recomputation) is rebuilt by `revnet.to_builtin`. Raises ValueError for a backbone with
  other custom layers."""
  found = list(keras_private.flatten_layers(backbone))
  if any(isinstance(layer, revnet.ReversibleStage) for layer in found):
    backbone = revnet.to_builtin(backbone)
    found = list(keras_private.flatten_layers(backbone))
  custom = sorted({type(layer).__name__ for layer in found
                   if not type(layer).__module__.startswith("keras.")})
  if custom:
    raise ValueError(f"{backbone.name} has layers that plain Keras cannot load: {custom}")
  return backbone


def build_backbone(name: str, **kwargs: Any) -> keras.Model:
  """Builds a registered backbone; raises ValueError naming the known ones."""
  return backbone_builder(name)(**kwargs)
