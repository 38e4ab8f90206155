r"""TensorFlow's oneDNN kernels on and off: the e2e training step's speed with each.

  python scripts/bench_onednn.py --data=folder:/tmp/cifar10 --tasks=jigsaw,rotation

TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, when it is imported, and turns oneDNN on by
default only on x86 CPUs with AVX-512-class features; `import psl_tf` asks for it when the
variable is unset. The setting cannot change inside a process, so each measurement is a child
process with the variable set to 1 or 0: it builds the e2e stage (all of B1..B5 trained, the
task's hardest level) on one batch held in memory, runs warm-up steps, then times
--steps steps. Rounds alternate which setting goes first, and the median per-round ratio
(on / off) is printed, so a machine shared with other jobs disturbs both alike. Each child
also reports whether TensorFlow says oneDNN is on, so a ratio is never read off two runs of
the same kernels.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(args):
  """Runs in a subprocess with TF_ENABLE_ONEDNN_OPTS already set by the parent."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # Imported here, after the parent chose the environment (psl_tf's default then keeps it).
  # pylint: disable=g-import-not-at-top
  import keras
  from tensorflow.python.util import _pywrap_util_port
  from psl_tf import data
  from psl_tf import guards
  from psl_tf import models
  from psl_tf import optim
  from psl_tf import stages as stages_lib
  from psl_tf import tasks
  from psl_tf import trainer
  # pylint: enable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  task = tasks.build_task(args.task, image_spec=tasks.ImageSpec(
      args.image_size, round(args.image_size * 8 / 7)))
  backbone = models.build_backbone(args.backbone, **(
      {"depth": args.depth, "width": args.width} if args.backbone == "cifar_resnet" else {}))
  unsafe = guards.onednn_unsafe_message(backbone, bool(_pywrap_util_port.IsMklEnabled()))
  if unsafe:  # the oneDNN child would die natively (docs/RELIABILITY.md)
    sys.exit(f"bench_onednn: {unsafe}")
  stage = stages_lib.make_stages("e2e", 3)[0]
  head = trainer.build_stage_head(backbone, task, stage)
  model = trainer.StageModel(backbone, task, stage, head, name="e2e")
  model.compile(optimizer=optim.build_optimizer("sgd", 0.01))
  input_fn = data.make_input_fn(data.load_source(args.data, "train"),
                                task.example_fn(stage.level, True), args.batch_size,
                                shuffle_buffer=256)
  x, y = next(iter(input_fn()))
  for _ in range(args.warmup):
    model.train_on_batch(x, y)
  start = time.perf_counter()
  for _ in range(args.steps):
    model.train_on_batch(x, y)
  seconds = time.perf_counter() - start
  print(json.dumps({"images_per_s": args.steps * args.batch_size / seconds,
                    "onednn_on": bool(_pywrap_util_port.IsMklEnabled())}))


def measure(args, task, setting):
  env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, os.path.abspath(__file__), f"--_child={task}",
         f"--backbone={args.backbone}", f"--depth={args.depth}", f"--width={args.width}",
         f"--image_size={args.image_size}", f"--batch_size={args.batch_size}",
         f"--data={args.data}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if out.returncode:
    sys.exit(f"bench_onednn: the child for {task} with TF_ENABLE_ONEDNN_OPTS={setting} "
             f"failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
  parser.add_argument("--backbone", default="cifar_resnet")
  parser.add_argument("--depth", type=int, default=10)
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--data", default="demo", help="demo or folder:PATH")
  parser.add_argument("--tasks", default="jigsaw,rotation")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=20, help="timed steps per child")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._child:  # pylint: disable=protected-access
    args.task = args._child  # pylint: disable=protected-access
    child(args)
    return

  print(f"machine: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"e2e step, {args.backbone} {args.image_size} px, batch {args.batch_size}, one batch in "
        f"memory, {args.steps} timed steps per child process, {args.rounds} rounds "
        f"(order alternating)")
  print(f"  {'task':<9} {'round':>5} {'on img/s':>9} {'off img/s':>10} {'on/off':>7}")
  for task in args.tasks.split(","):
    ratios = []
    for r in range(args.rounds):
      order = ("1", "0") if r % 2 == 0 else ("0", "1")
      result = {setting: measure(args, task, setting) for setting in order}
      if not result["1"]["onednn_on"] or result["0"]["onednn_on"]:
        sys.exit("bench_onednn: TensorFlow did not follow TF_ENABLE_ONEDNN_OPTS "
                 f"(on: {result['1']['onednn_on']}, off: {result['0']['onednn_on']})")
      on, off = result["1"]["images_per_s"], result["0"]["images_per_s"]
      ratios.append(on / off)
      print(f"  {task:<9} {r + 1:>5} {on:>9.1f} {off:>10.1f} {on / off:>7.2f}")
    print(f"  {task:<9} median on/off {statistics.median(ratios):.2f}")


if __name__ == "__main__":
  main()
