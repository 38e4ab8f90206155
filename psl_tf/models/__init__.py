"""Backbones as five functional sub-models b1..b5, and the table that builds them by name."""

from psl_tf.models import blocks
from psl_tf.models import resnet
from psl_tf.models import revnet
from psl_tf.models.blocks import BLOCK_NAMES, get_blocks, run_blocks

# name -> builder(**kwargs). Explicit, so an unknown name can list the known ones.
BACKBONES = {
    "resnet50": resnet.resnet50,
    "cifar_resnet": resnet.cifar_resnet,
    "revnet50": revnet.revnet50,
}


def backbone_builder(name):
  """The registered builder of `name`; raises ValueError naming the known ones."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name]


def build_backbone(name, **kwargs):
  """Builds a registered backbone; raises ValueError naming the known ones."""
  return backbone_builder(name)(**kwargs)
