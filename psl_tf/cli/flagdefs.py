"""Command-line flags of `python -m psl_tf.train`, defined in one place.

Only entry points read these values; library code gets a `psl_tf.config.Config`.
Task-specific flags are named `<task prefix>_<option>` (e.g. `--rotation_crop`) and reach the
task's constructor as `option=` (see `Task.option_prefixes`).
"""

import math

from absl import flags

# Flags that may change when a run is resumed: they do not change what is learned.
RESUME_SAFE = frozenset({"strategy", "tpu", "verbose", "export", "flagfile",
                         "jigsaw_cache_dir", "online_probes", "heldout_split",
                         "heldout_examples", "first_batch_timeout", "deterministic",
                         "cache", "cpu_replicas"})


def define_train_flags():
  """Defines every training flag (idempotent: a second call does nothing)."""
  if "task" in flags.FLAGS:
    return
  # What to learn.
  flags.DEFINE_string("task", "rotation", "Pretext task ladder: rotation, jigsaw, simclr, mocov2.")
  flags.DEFINE_enum("mode", "psl", ["psl", "sl", "psl_f", "e2e", "greedy"],
                    "psl: progressive stage-wise; sl: stage-wise on the hardest level only; "
                    "psl_f: psl with full gradients; e2e: one end-to-end stage; greedy: "
                    "non-overlapping stages B1-B2/B3-B4/B5.")
  flags.DEFINE_string("stages", "", "Block ranges of the stages, e.g. 1-3,2-4,3-5 "
                      "(empty: the mode's default).")
  flags.DEFINE_string("levels", "", "Task level of each stage, e.g. 1,2,3 "
                      "(empty: stage k on level k; the top level in sl and e2e).")
  # Data.
  flags.DEFINE_string("dataset", "demo", "demo (offline sample photos), folder:PATH "
                      "(class sub-folders give labels) or a TFDS name such as cifar10.")
  flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  flags.DEFINE_string("train_split", "train", "Split to pre-train on.")
  flags.DEFINE_string("heldout_split", "auto", "Split each stage's pretext accuracy is "
                      "measured on after training (auto: test or validation when the data set "
                      "has one; none: skip).")
  flags.DEFINE_integer("heldout_examples", 10_000, "At most this many held-out images per "
                       "stage (0: the whole split).")
  flags.DEFINE_integer("image_size", 32, "Side of the square crop the backbone sees.")
  flags.DEFINE_integer("resize", 0, "Shorter side before cropping (0: image_size * 256/224).")
  flags.DEFINE_enum("image_check", "full", ["full", "header", "none"],
                    "How folder images are checked before training; unreadable ones are "
                    "skipped and counted.")
  flags.DEFINE_integer("shuffle_buffer", 10_000, "Shuffle buffer, in images.")
  flags.DEFINE_enum("cache", "auto", ["auto", "always", "never"],
                    "Decode the training images once and keep them in memory as uint8 "
                    "(auto: when the decoded split is under 2 GiB). Same images, same order.")
  # Model.
  flags.DEFINE_string("backbone", "cifar_resnet", "resnet50, cifar_resnet or revnet50.")
  flags.DEFINE_integer("depth", 10, "cifar_resnet depth: 10, 18, 34 or 50.")
  flags.DEFINE_integer("width", 16, "cifar_resnet width of b1/b2 (doubled per block after).")
  flags.DEFINE_integer("filters_factor", 4, "revnet50 width multiplier.")
  flags.DEFINE_bool("recompute", False, "revnet50: recompute activations in the backward pass.")
  flags.DEFINE_integer("head_hidden", 512, "Hidden width of the task heads (0: linear head).")
  flags.DEFINE_enum("frozen_bn", "inference", ["inference", "batch_stats"],
                    "BatchNorm of frozen blocks: inference (moving statistics, kept) or "
                    "batch_stats (batch statistics, moving averages keep updating).")
  flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16", "auto"],
                    "Keras mixed-precision policy: variables, BatchNorm statistics, logits and "
                    "losses stay float32; mixed_float16 adds dynamic loss scaling; auto picks "
                    "mixed_bfloat16 on TPUs and CPUs with AVX512_BF16/AMX, else float32.")
  flags.DEFINE_bool("sync_bn", False, "BatchNorm statistics over all replicas (cross-replica "
                    "BN) instead of per replica.")
  # Optimisation (per stage).
  flags.DEFINE_integer("batch_size", 64, "Global batch size (over all replicas).")
  flags.DEFINE_list("epochs", ["30"], "Epochs per stage: one value, or one per stage.")
  flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0: images // batch_size).")
  flags.DEFINE_enum("optimizer", "adam", ["sgd", "adam", "lars"],
                    "Optimizer, rebuilt for every stage (lars applies --weight_decay itself).")
  flags.DEFINE_float("learning_rate", 0.003, "Peak learning rate of every stage.")
  flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
  flags.DEFINE_float("weight_decay", 1e-4, "L2 weight decay on kernels (not biases, not BN).")
  flags.DEFINE_enum("lr_schedule", "cosine", ["step", "cosine", "constant"],
                    "Learning-rate schedule within a stage.")
  flags.DEFINE_string("lr_step_split", "20,20,10,10", "Step schedule: relative lengths of "
                      "the constant pieces (the paper's 20/20/10/10 epochs).")
  flags.DEFINE_float("lr_decay", 0.1, "Step schedule: factor between pieces.")
  flags.DEFINE_float("warmup_epochs", 0.0, "Cosine schedule: linear warm-up epochs.")
  # Running.
  flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
  flags.DEFINE_string("workdir", "", "Work directory (empty: runs/<task>_<mode>_<dataset>).")
  flags.DEFINE_bool("export", True, "Write a SavedModel of the backbone to <workdir>/export.")
  flags.DEFINE_bool("online_probes", False, "Train stop-gradient linear probes on every "
                    "computed block alongside the pretext task (labelled data only); per-epoch "
                    "accuracy to TensorBoard (logs/online_probes) and summary.json.")
  flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 "
                       "one line per epoch.")
  flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
                    "tf.distribute strategy.")
  flags.DEFINE_string("tpu", "", "TPU name or address for --strategy=tpu.")
  flags.DEFINE_integer("cpu_replicas", 0, "With --strategy=mirrored: split the CPU into this "
                       "many logical devices and give each replica its own input pipeline, "
                       "as each worker of --strategy=multi_worker has (the one-process twin of "
                       "an N-worker run, for testing; scripts/multi_worker_drill.py). 0: off.")
  flags.DEFINE_integer("first_batch_timeout", 600, "Seconds a stage may wait for its first "
                       "batch before the run stops with an error (0: wait forever).")
  flags.DEFINE_bool("deterministic", False, "Deterministic TensorFlow ops "
                    "(tf.config.experimental.enable_op_determinism): reruns and resumed runs "
                    "give bit-identical weights; slower.")
  # Task options: <prefix>_<option>.
  flags.DEFINE_enum("rotation_crop", "uniform", ["uniform", "per_angle"],
                    "Centre crop after rotating: the same 1/sqrt(2) crop for every angle, or "
                    "each angle's largest crop (leaks a zoom cue).")
  # Jigsaw (psl_tf/tasks/jigsaw.py); tile sizes are the task's own, --image_size is the
  # whole-image size of evaluation and export.
  flags.DEFINE_list("jigsaw_sizes", ["24", "48", "96"],
                    "Permutation set sizes of levels C1, C2, C3 (prefixes of one greedy "
                    "sequence). The default is the demo's, small enough to learn in minutes; "
                    "the paper's 500,1000,2000 are in flags/jigsaw_*.flags.")
  flags.DEFINE_enum("jigsaw_criterion", "average", ["average", "maxmin"],
                    "Greedy permutation selection: maximise the average Hamming distance "
                    "(Noroozi & Favaro) or the minimum one.")
  flags.DEFINE_integer("jigsaw_perm_seed", 0, "Seed of the greedy permutation sequence.")
  # Tile geometry; 0 scales it from --image_size by the paper's ratios (224 -> 256/225/75/64).
  flags.DEFINE_integer("jigsaw_resize", 0, "Jigsaw: shorter side before the random crop.")
  flags.DEFINE_integer("jigsaw_crop", 0, "Jigsaw: side of the random square crop (3 x cell).")
  flags.DEFINE_integer("jigsaw_cell", 0, "Jigsaw: side of a cell of the 3x3 grid.")
  flags.DEFINE_integer("jigsaw_tile", 0, "Jigsaw: side of the random tile inside each cell.")
  flags.DEFINE_bool("jigsaw_normalize", True, "Jigsaw: standardise each tile on its own.")
  flags.DEFINE_float("jigsaw_color_jitter", 0.0, "Jigsaw: per-tile colour jitter strength "
                     "(0: off).")
  flags.DEFINE_float("jigsaw_grayscale", 0.0, "Jigsaw: probability of a grayscale tile.")
  flags.DEFINE_string("jigsaw_cache_dir", "", "Jigsaw: permutation cache directory "
                      "(empty: $PSL_TF_CACHE or ~/.cache/psl_tf).")
  # Contrastive ladders (psl_tf/data/augment.py, tasks/simclr.py, tasks/mocov2.py). The
  # contrastive_ flags reach both tasks; --head_hidden is the projection MLP's hidden width
  # (0: as wide as the stage's output features).
  flags.DEFINE_float("contrastive_crop_min_scale", 0.08, "Smallest random-resized-crop area "
                     "fraction (SimCLR 0.08, MoCo v2 0.2).")
  flags.DEFINE_float("contrastive_color_strength", 1.0, "Colour jitter strength s of T2/T3 "
                     "(SimCLR ImageNet 1.0, CIFAR and MoCo v2 0.5).")
  flags.DEFINE_float("contrastive_color_prob", 0.8, "Probability of the colour jitter (T2/T3).")
  flags.DEFINE_float("contrastive_gray_prob", 0.2, "Probability of grayscale (T2/T3).")
  flags.DEFINE_float("contrastive_blur_prob", 0.5, "Probability of the Gaussian blur (T3).")
  flags.DEFINE_float("contrastive_sobel_prob", 0.2, "Probability of replacing a view by its "
                     "Sobel edge map (T3).")
  flags.DEFINE_integer("contrastive_proj_dim", 128, "Output width of the projection head.")
  flags.DEFINE_float("simclr_temperature", 0.1, "SimCLR: NT-Xent temperature.")
  flags.DEFINE_enum("simclr_lr_scaling", "linear", ["linear", "sqrt", "none"],
                    "SimCLR: stage learning rate from --learning_rate: linear = lr x "
                    "batch / 256 (lr 0.3 gives SimCLR's 0.3 x batch / 256), sqrt = lr x "
                    "sqrt(batch), none = as given.")
  flags.DEFINE_float("mocov2_temperature", 0.2, "MoCo v2: InfoNCE temperature.")
  # Demo defaults: a queue smaller than one epoch of the 1,000 demo images (a longer one would
  # hold stale keys of the very images it should tell apart) and a key encoder fast enough for
  # a few hundred steps; the paper-scale values (65,536 and 0.999) are in the flagfiles.
  flags.DEFINE_integer("mocov2_queue_size", 512, "MoCo v2: negatives in the queue (MoCo v2 "
                       "on ImageNet: 65536).")
  flags.DEFINE_float("mocov2_key_momentum", 0.99, "MoCo v2: EMA momentum m of the key "
                     "encoder (MoCo v2 on ImageNet: 0.999).")


_INT_MAX = 2**31 - 1
# Allowed range of every numeric flag: (low, high, low_is_open). Values outside it (or NaN)
# are refused in one line before anything is built. A test checks that every integer and float
# flag is listed here.
RANGES = {
    "heldout_examples": (0, _INT_MAX, False),
    "image_size": (8, 1024, False),
    "resize": (0, 4096, False),
    "shuffle_buffer": (1, 10**8, False),
    "depth": (1, 1000, False),
    "width": (1, 4096, False),
    "filters_factor": (1, 64, False),
    "head_hidden": (0, 65536, False),
    "batch_size": (1, 65536, False),
    "steps_per_epoch": (0, 10**9, False),
    "learning_rate": (0.0, 100.0, True),
    "momentum": (0.0, 1.0, False),
    "weight_decay": (0.0, 1.0, False),
    "lr_decay": (0.0, 1.0, True),
    "warmup_epochs": (0.0, 10**6, False),
    "seed": (0, _INT_MAX, False),
    "verbose": (0, 2, False),
    "first_batch_timeout": (0, 10**6, False),
    "cpu_replicas": (0, 64, False),
    "jigsaw_perm_seed": (0, _INT_MAX, False),
    "jigsaw_resize": (0, 4096, False),
    "jigsaw_crop": (0, 4096, False),
    "jigsaw_cell": (0, 4096, False),
    "jigsaw_tile": (0, 4096, False),
    "jigsaw_color_jitter": (0.0, 10.0, False),
    "jigsaw_grayscale": (0.0, 1.0, False),
    "contrastive_crop_min_scale": (0.0, 1.0, True),
    "contrastive_color_strength": (0.0, 10.0, False),
    "contrastive_color_prob": (0.0, 1.0, False),
    "contrastive_gray_prob": (0.0, 1.0, False),
    "contrastive_blur_prob": (0.0, 1.0, False),
    "contrastive_sobel_prob": (0.0, 1.0, False),
    "contrastive_proj_dim": (1, 65536, False),
    "simclr_temperature": (0.0, 100.0, True),
    "mocov2_temperature": (0.0, 100.0, True),
    "mocov2_queue_size": (1, 10**8, False),
    "mocov2_key_momentum": (0.0, 1.0, False),
}


def check_ranges(flag_values):
  """Raises ValueError, in one line, for the first numeric flag outside its RANGES entry."""
  for name, (low, high, low_open) in RANGES.items():
    if name not in flag_values:
      continue
    value = flag_values[name].value
    if value is None:
      continue
    bad = not math.isfinite(value) or value > high or value < low or (low_open and value == low)
    if bad:
      interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
      raise ValueError(f"--{name}={value} is out of range: it must be in {interval}")
