r"""Speed of stage-wise training, measured side by side in one process.

  python scripts/bench_speed.py --backbone=resnet50 --image_size=112 --batch_size=16
  python scripts/bench_speed.py --backbone=cifar_resnet --image_size=32 --batch_size=128 \
      --data=folder:/tmp/cifar10 --memory

Prints, on one batch and one backbone:
* the train-step time of each PSL stage relative to an e2e step, beside the ratio the
  blocks' FLOPs predict (frozen blocks cost one forward pass, trained blocks about three:
  forward, gradient to the input and gradient to the weights);
* our e2e step against a plain `keras.applications.ResNet50` compile/fit step of the same
  size (with --backbone=resnet50), as wall-time and CPU-time ratios at each precision;
* each task's input pipeline in images/s beside the e2e step's consumption in images/s;
* with --memory, the peak resident memory of a process that runs each stage, minus that of a
  process that only builds the model (one subprocess per measurement);
* with --precision=float32,mixed_bfloat16 (any of float32, mixed_bfloat16, mixed_float16,
  auto), every step at every precision, and each one's speed-up over float32;
* with --xla, the e2e step compiled with XLA (jit_compile=True) beside the default;
* with --real_vs_memory, for every task in --tasks: the e2e training step fed by the task's
  real input pipeline (a live iterator whose prefetching runs while the step runs, so both
  share the CPU) against the same step fed one batch held in memory, in interleaved rounds of
  --steps_per_round steps; the ratio is how much of the step's speed the pipeline leaves.
  --cache (auto/always/never) decodes the source once into memory first, as training does.

Steps are timed in interleaved rounds (A B C ... A B C ...) and the median per-round ratio is
reported, so a machine shared with other jobs disturbs every variant alike.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from psl_tf.cli import quiet  # pylint: disable=g-import-not-at-top,wrong-import-position

tf = quiet.import_tensorflow_quietly()
tf.get_logger().setLevel("ERROR")  # the FLOPs profiler warns about its own v1 API

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from psl_tf.data import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import precision as precision_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import stages as stages_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import tasks  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from psl_tf.experiments.costs import block_flops  # pylint: disable=g-import-not-at-top,wrong-import-position


def predicted_ratio(stage, flops):
  frozen = sum(flops[i - 1] for i in stage.frozen_blocks)
  trained = sum(flops[i - 1] for i in stage.trained_blocks)
  return (frozen + 3 * trained) / (3 * sum(flops))


def _stage_model(backbone, task, stage, lr=0.01, jit_compile=False):
  """A StageModel as `psl_tf.pretrain` builds it, under the current dtype policy (with
  the LossScaleOptimizer under mixed_float16)."""
  head = trainer.build_stage_head(backbone, task, stage)
  model = trainer.StageModel(backbone, task, stage, head, name=f"stage_{stage.index}")
  optimizer = precision_lib.wrap_optimizer(optim.build_optimizer("sgd", lr))
  model.compile(optimizer=optimizer, jit_compile=jit_compile)
  optimizer.build(model.trained_variables())
  return model


_SOURCES = {}


def _source(args):
  """The training source, decoded into memory per --cache (once per process)."""
  if args.data not in _SOURCES:
    _SOURCES[args.data] = data.cache_in_memory(data.load_source(args.data, "train"),
                                               args.cache)
  return _SOURCES[args.data]


def _batch(task, level, args):
  fn = data.make_input_fn(_source(args), task.example_fn(level, True), args.batch_size,
                          shuffle_buffer=256)
  return next(iter(fn()))


def _task(name, args):
  return tasks.build_task(name, image_spec=tasks.ImageSpec(args.image_size,
                                                           round(args.image_size * 8 / 7)))


def real_vs_memory(args, task_names, policy, rounds, steps_per_round):
  """{(task, pipeline): (real images/s, in-memory images/s, [per-round ratios],
  pipeline CPU share)} of the e2e step.

  Pipelines: 'as configured' (--cache, the task's batched map unless --no_batch_fn) and,
  with --compare_pipelines, also 'per-example, cached' (the same in-memory source mapped
  image by image: what the batched map alone changes) and 'per-example, decoded per epoch'
  (the pipeline before --cache and batched maps). The CPU share is (CPU time per image with
  the real pipeline - CPU time per image with the in-memory batch) / CPU time per image with
  the real pipeline: the part of the cores the pipeline took. CPU time is less disturbed by
  other jobs on the machine than wall time. Each arm's CPU time runs until its pipelines'
  background refills have stopped (`_settle`): the live iterators keep prefetching after
  an arm's last step, and that work would otherwise be charged to the next arm (the
  in-memory one, whose share then came out negative).
  """
  e2e = stages_lib.make_stages("e2e", 3)[0]
  variants = [("configured", _source(args), not args.no_batch_fn)]
  if args.compare_pipelines:
    if _source(args).in_memory and not args.no_batch_fn:
      variants.append(("per-example+cache", _source(args), False))
    variants.append(("per-example+decode", data.load_source(args.data, "train"), False))
  arms = {}
  with precision_lib.policy_scope(policy):
    for name in task_names:
      task = _task(name, args)
      keras.utils.set_random_seed(0)
      model = _stage_model(build(args), task, e2e)
      iterators = {}
      for label, source, batched in variants:
        input_fn = data.make_input_fn(
            source, task.example_fn(e2e.level, True), args.batch_size, seed=1,
            shuffle_buffer=args.shuffle_buffer,
            batch_fn=task.batch_fn(e2e.level, True) if batched else None)
        iterators[label] = iter(input_fn())
      batch = next(iterators["configured"])
      for _ in range(2):  # trace, and let the pipelines fill their buffers
        model.train_on_batch(*batch)
        for iterator in iterators.values():
          model.train_on_batch(*next(iterator))
      arms[name] = (model, iterators, batch)
  wall = {(n, l): [] for n in arms for l, _, _ in variants}
  cpu = {(n, l): 0.0 for n in arms for l, _, _ in variants}
  wall_mem = {n: [] for n in arms}
  cpu_mem = {n: 0.0 for n in arms}
  for round_index in range(rounds + 1):  # round 0 warms every arm up and is not counted
    keep = round_index > 0
    for name, (model, iterators, batch) in arms.items():
      for label, iterator in iterators.items():
        start, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(steps_per_round):
          model.train_on_batch(*next(iterator))
        wall_time = time.perf_counter() - start
        _settle()  # the refill of this arm's prefetch buffers is this arm's CPU time
        if keep:
          wall[(name, label)].append(wall_time)
          cpu[(name, label)] += time.process_time() - cpu0
      start, cpu0 = time.perf_counter(), time.process_time()
      for _ in range(steps_per_round):
        model.train_on_batch(*batch)
      wall_time = time.perf_counter() - start
      _settle()
      if keep:
        wall_mem[name].append(wall_time)
        cpu_mem[name] += time.process_time() - cpu0
  images = steps_per_round * args.batch_size
  results = {}
  for (name, label), times in wall.items():
    memory = wall_mem[name]
    # Each round's memory arm is paired with the same round's real arm.
    ratios = [m / r for r, m in zip(times, memory)]
    share = (cpu[(name, label)] - cpu_mem[name]) / cpu[(name, label)]
    results[(name, label)] = (images / statistics.median(times),
                              images / statistics.median(memory), ratios, share)
  return results


def _settle(poll=0.2, idle_cpu=0.02, limit=10.0):
  """Waits until this process's background work (tf.data prefetching and parallel maps
  refilling their buffers) has stopped: no more than `idle_cpu` CPU seconds per `poll`
  seconds, or `limit` seconds. Called after each timed arm and counted in its CPU time, so
  the batches an arm took are refilled on its account, not on the next arm's."""
  deadline = time.perf_counter() + limit
  while time.perf_counter() < deadline:
    cpu = time.process_time()
    time.sleep(poll)
    if time.process_time() - cpu < idle_cpu:
      return


def time_steps(named_models, batches, rounds, warmup=2):
  """{name: [seconds per step for each round]} with interleaved rounds."""
  for name, model in named_models.items():
    for _ in range(warmup):
      model.train_on_batch(*batches[name])
  times = {name: [] for name in named_models}
  cpu_times = {name: [] for name in named_models}
  for _ in range(rounds):
    for name, model in named_models.items():
      start, cpu = time.perf_counter(), time.process_time()
      model.train_on_batch(*batches[name])
      times[name].append(time.perf_counter() - start)
      cpu_times[name].append(time.process_time() - cpu)
  time_steps.cpu_times = cpu_times  # CPU seconds per step, for callers that want them
  return times


def keras_resnet50_model(args, num_classes):
  base = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                     input_shape=(args.image_size, args.image_size, 3))
  x = keras.layers.Dense(512, use_bias=False)(base.output)
  x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
  model = keras.Model(base.input, keras.layers.Dense(num_classes)(x))
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def build(args):
  return models.build_backbone(args.backbone, **({"depth": args.depth, "width": args.width}
                                                 if args.backbone == "cifar_resnet" else {}))


def child_memory(args, which):
  """Runs in a subprocess: builds the model, runs steps of stage `which` (or none)."""
  keras.utils.set_random_seed(0)
  backbone = build(args)
  task = tasks.build_task("rotation", image_spec=tasks.ImageSpec(args.image_size,
                                                                 round(args.image_size * 8 / 7)))
  if which != "build":
    stage_list = (stages_lib.make_stages("e2e", 3) if which == "e2e"
                  else stages_lib.make_stages("psl", 3))
    stage = stage_list[0] if which == "e2e" else stage_list[int(which) - 1]
    model = _stage_model(backbone, task, stage)
    x, y = _batch(task, stage.level, args)
    for _ in range(3):
      model.train_on_batch(x, y)
  print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb():
  """This process's peak resident memory. VmHWM belongs to the address space made by exec;
  ru_maxrss survives exec on Linux and would report the (larger) parent that forked us."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(args, which):
  cmd = [sys.executable, os.path.abspath(__file__), f"--_child={which}",
         f"--backbone={args.backbone}", f"--image_size={args.image_size}",
         f"--batch_size={args.batch_size}", f"--depth={args.depth}", f"--width={args.width}",
         f"--data={args.data}"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def step_table(args, policies):
  """Per-stage steps at every precision (interleaved), and each task's pipeline rate."""
  keras.utils.set_random_seed(0)
  task = _task("rotation", args)
  psl = stages_lib.make_stages("psl", 3)
  e2e = stages_lib.make_stages("e2e", 3)[0]
  named, batches, stage_of = {}, {}, {}
  for policy in policies:
    suffix = "" if len(policies) == 1 else f"@{policy}"
    with precision_lib.policy_scope(policy):
      for stage in [*psl, e2e]:
        name = ("e2e" if stage is e2e else f"psl_stage{stage.index}") + suffix
        named[name] = _stage_model(build(args), task, stage)
        batches[name] = _batch(task, stage.level, args)
        stage_of[name] = stage
      if args.xla:
        named["e2e_xla" + suffix] = _stage_model(build(args), task, e2e, jit_compile=True)
        batches["e2e_xla" + suffix] = batches["e2e" + suffix]
        stage_of["e2e_xla" + suffix] = e2e
      if args.backbone == "resnet50":
        named["keras_resnet50" + suffix] = keras_resnet50_model(args, 8)
        batches["keras_resnet50" + suffix] = batches["e2e" + suffix]
  flops = block_flops(build(args), args.image_size)
  times = time_steps(named, batches, args.rounds)

  print("\nblock forward GFLOPs per image: " +
        ", ".join(f"B{i + 1} {f / 1e9:.3f}" for i, f in enumerate(flops)))
  cpu_times = time_steps.cpu_times
  print(f"\n{'step':<32}{'ms/step':>10}{'images/s':>10}{'vs e2e':>8}{'FLOPs predict':>15}"
        f"{'vs float32':>12}{'CPU vs float32':>16}")
  for name in named:
    base, _, policy = name.partition("@")
    e2e_name = "e2e" + (f"@{policy}" if policy else "")
    ratios = [t / e for t, e in zip(times[name], times[e2e_name])]
    stage = stage_of.get(name)
    pred = f"{predicted_ratio(stage, flops):.2f}" if stage else "-"
    speedup = cpu_speedup = "-"
    if policy and policy != "float32" and f"{base}@float32" in times:
      ref = base + "@float32"
      speedup = f"{statistics.median([f / t for t, f in zip(times[name], times[ref])]):.2f}x"
      # Total CPU seconds (all threads) per step: less disturbed by other jobs than wall time.
      cpu_speedup = f"{sum(cpu_times[ref]) / sum(cpu_times[name]):.2f}x"
    median = statistics.median(times[name])
    print(f"{name:<32}{1000 * median:>10.1f}{args.batch_size / median:>10.1f}"
          f"{statistics.median(ratios):>8.2f}{pred:>15}{speedup:>12}{cpu_speedup:>16}")
  for policy in policies:
    suffix = "" if len(policies) == 1 else f"@{policy}"
    if "keras_resnet50" + suffix in times:
      ours, keras_times = times["e2e" + suffix], times["keras_resnet50" + suffix]
      wall = statistics.median([o / k for o, k in zip(ours, keras_times)])
      cpu = sum(cpu_times["e2e" + suffix]) / sum(cpu_times["keras_resnet50" + suffix])
      print(f"e2e step / keras.applications.ResNet50 step at {policy}: {wall:.2f}x wall time "
            f"(median of per-round ratios), {cpu:.2f}x CPU time")
  e2e_name = "e2e" if len(policies) == 1 else f"e2e@{policies[0]}"
  e2e_rate = args.batch_size / statistics.median(times[e2e_name])
  print(f"\ninput pipelines ({args.data}), images/s vs the {e2e_name} step's "
        f"{e2e_rate:.1f} images/s:")
  for name in args.tasks.split(","):
    try:
      t = _task(name, args)
    except TypeError as e:
      print(f"  {name:<10} skipped ({e})")
      continue
    rate, _ = benchmark.pipeline_rate(
        _source(args), t.example_fn(t.num_levels, True), args.batch_size,
        batch_fn=None if args.no_batch_fn else t.batch_fn(t.num_levels, True))
    print(f"  {name:<10}{rate:>10.1f} images/s  = {rate / e2e_rate:.1f}x the step's consumption")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--backbone", default="resnet50")
  parser.add_argument("--depth", type=int, default=18)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=112)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--data", default="demo", help="demo or folder:PATH")
  parser.add_argument("--tasks", default=",".join(sorted(tasks.TASKS)),
                      help="tasks whose input pipelines to time")
  parser.add_argument("--memory", action="store_true", help="also measure peak memory")
  parser.add_argument("--precision", default="float32",
                      help="comma-separated precisions to time: float32, mixed_bfloat16, "
                           "mixed_float16, auto")
  parser.add_argument("--xla", action="store_true",
                      help="also time the e2e step compiled with XLA (jit_compile=True)")
  parser.add_argument("--real_vs_memory", action="store_true",
                      help="each task's e2e step on its real pipeline vs one in-memory batch")
  parser.add_argument("--steps_per_round", type=int, default=10)
  parser.add_argument("--shuffle_buffer", type=int, default=10_000)
  parser.add_argument("--cache", default="auto", choices=data.CACHE_MODES,
                      help="decode the source into memory first (as --cache in training)")
  parser.add_argument("--compare_pipelines", action="store_true",
                      help="--real_vs_memory also with per-example maps on the cached source "
                           "and with the per-example pipeline that decodes every epoch")
  parser.add_argument("--no_batch_fn", action="store_true",
                      help="per-example task maps even where a task has a batched form")
  parser.add_argument("--skip_steps", action="store_true",
                      help="skip the per-stage step table and the pipeline rates")
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:  # pylint: disable=protected-access
    child_memory(args, args._child)  # pylint: disable=protected-access
    return

  policies = [precision_lib.resolve(p) for p in args.precision.split(",")]
  print(f"machine: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"load average {' '.join(f'{l:.2f}' for l in os.getloadavg())}")
  print(f"backbone {args.backbone}, image {args.image_size}px, batch {args.batch_size}, "
        f"{args.rounds} interleaved rounds, precisions {', '.join(policies)} "
        f"({precision_lib.environment_hint()})")
  if not args.skip_steps:
    step_table(args, policies)
  if args.real_vs_memory:
    policy = policies[-1]
    print(f"\nreal pipeline vs in-memory batch, e2e step at {policy}, data {args.data} "
          f"(--cache={args.cache}: {'in memory' if _source(args).in_memory else 'decoded per epoch'})"
          f", {args.rounds} rounds x {args.steps_per_round} steps:")
    print(f"  {'task':<10}{'pipeline':<20}{'real img/s':>11}{'memory img/s':>13}"
          f"{'real/memory':>12}{'min..max':>12}{'pipeline CPU share':>20}")
    results = real_vs_memory(args, args.tasks.split(","), policy, args.rounds,
                             args.steps_per_round)
    for (name, label), (real, memory, ratios, share) in results.items():
      print(f"  {name:<10}{label:<20}{real:>11.1f}{memory:>13.1f}"
            f"{statistics.median(ratios):>12.2f}{min(ratios):>7.2f}..{max(ratios):<5.2f}"
            f"{100 * share:>17.1f} %")
  if args.memory:
    base = peak_memory(args, "build")
    print(f"\npeak RSS above a build-only process ({base:.0f} MB):")
    for which in ("1", "2", "3", "e2e"):
      print(f"  {'psl stage ' + which if which != 'e2e' else 'e2e':<12}"
            f"{peak_memory(args, which) - base:>8.0f} MB")


if __name__ == "__main__":
  main()
