"""SavedModel export of a backbone for downstream use.

The default endpoint (`serving_default`) takes a batch of uint8 RGB images of any size,
resizes them to the size the backbone was trained at, and returns the per-block feature
maps ``b1``..``b5`` and their global-average-pooled vectors ``b1_pool``..``b5_pool``. The
SavedModel needs only TensorFlow to load: no `psl_tf`, no Keras.
"""

import keras
import tensorflow as tf

from psl_tf.models import blocks as blocks_lib


def features_fn(backbone, image_size):
  """`uint8 images [N, H, W, 3] -> {b1..b5, b1_pool..b5_pool}` for a backbone."""
  def serve(images):
    x = tf.image.resize(tf.cast(images, tf.float32) / 255.0, [image_size, image_size],
                        antialias=True)
    maps = backbone(x, training=False)
    outputs = {name: maps[name] for name in blocks_lib.BLOCK_NAMES}
    outputs.update({f"{name}_pool": tf.reduce_mean(maps[name], axis=[1, 2])
                    for name in blocks_lib.BLOCK_NAMES})
    return outputs
  return serve


def export_backbone(backbone, path, image_size):
  """Writes the backbone as a SavedModel at `path` (see the module docstring)."""
  archive = keras.export.ExportArchive()
  archive.track(backbone)
  archive.add_endpoint(
      "serving_default", features_fn(backbone, image_size),
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  archive.write_out(path, verbose=False)
  return path
