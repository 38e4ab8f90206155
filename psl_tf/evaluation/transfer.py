"""Labelled evaluation data for any data set, including multi-label ones (VOC2007).

Transfer (the paper's Table 9) trains the linear probes on another data set than the one the
backbone was pre-trained on. Single-label data comes from `psl_tf.data.load_source`. TFDS data
sets whose examples carry a list of image-level labels (``labels``: a sequence of class labels,
as `voc/2007`) become multi-label sources whose label is a multi-hot float vector; the probes
then use a sigmoid cross-entropy and report mean average precision (VOC07 mAP).

For VOC every object's class counts as present, "difficult" objects included.
"""

from psl_tf import data


def _multilabel_classes(features):
  """Number of classes if `features` has image-level multi-labels and no single label."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if "label" in features or "labels" not in features:
    return None
  labels = features["labels"]
  if isinstance(labels, tfds.features.Sequence) and isinstance(labels.feature,
                                                               tfds.features.ClassLabel):
    return labels.feature.num_classes
  return None


def multi_hot(label_list, num_classes):
  """[num_classes] float32 vector with 1 at every listed class (repeats count once)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  hot = tf.reduce_max(tf.one_hot(tf.cast(label_list, tf.int32), num_classes), axis=0)
  # An image without labels has an empty list: reduce_max of nothing is -inf, so clip.
  return tf.maximum(tf.reshape(hot, [num_classes]), 0.0)


def load_labelled(dataset, split, data_dir=None, image_check="full"):
  """(Source, multi_label) for `dataset` at `split`.

  Multi-label sources decode to (image uint8, multi-hot float32 [C]); single-label ones are
  `psl_tf.data` sources with integer labels.
  """
  if dataset == "demo" or dataset.startswith("folder:"):
    return data.load_source(dataset, split, data_dir, image_check), False
  elements, info = data.tfds_load(dataset, split, data_dir)
  num_classes = _multilabel_classes(info.features)
  if num_classes is None:
    return data.tfds_source(dataset, split, data_dir), False

  def decode(example):
    return example["image"], multi_hot(example["labels"], num_classes)

  try:
    num_examples = info.splits[split].num_examples
  except Exception:  # pylint: disable=broad-except  (split arithmetic like 'train[:10%]')
    num_examples = None
  return data.Source(dataset, elements, decode, num_examples, num_classes), True
