r"""Multi-worker drill on loopback: two `--strategy=multi_worker` processes on 127.0.0.1.

  python scripts/multi_worker_drill.py [--root=/tmp/psl_tf_mw_drill] [--json=out.json]

Three runs of the same smoke command (rotation, 3 stages x 3 epochs x 3 steps, global batch
16, --deterministic, no held-out split), then checks:

1. twin: `--strategy=mirrored --cpu_replicas=2` in one process: two logical CPU devices, one
   input pipeline per replica (replica i reads shard i of the examples with pipeline seed i,
   8 images a step), which is what worker i of a two-worker run reads. A plain
   `--strategy=mirrored` run would not be comparable: it splits one pipeline's batches
   between its replicas, while each worker shards the examples and seeds its own pipeline.
2. multi-worker: two processes, TF_CONFIG cluster {"worker": [127.0.0.1:p0, 127.0.0.1:p1]}
   (ports free at run time), task index 0 and 1; worker 0 is the chief. Both exit 0; every
   stage's weights equal the twin's within --atol; the chief's work directory holds the same
   files as the twin's; the non-chief wrote nothing in the work directory (every file
   open-for-write, mkdir, rename and unlink of the non-chief is traced with strace when it is
   installed; otherwise only the TensorBoard event files' process ids are checked) and wrote
   its checkpoints under its own TMPDIR instead.
3. kill: the two workers again on a fresh work directory; a random 0 to --max_delay s after
   the chief's first epoch checkpoint of stage --kill_stage, worker --kill_worker gets SIGKILL
   (the stage must not have finished by then). The
   survivor must stop by itself within --survivor_timeout (else it is killed and that is
   reported). Both are restarted with the same command and TF_CONFIG; both must exit 0, the
   chief must say it resumed stage --kill_stage from an epoch checkpoint, and every stage's
   weights must equal the uninterrupted multi-worker run's bit for bit.

Every process has a --timeout; every child is killed on every exit path. Exit code 1 if a
check fails. Prints one line per check and, with --json, writes the results.
"""

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import _drills  # scripts/_drills.py, next to this file

ROOT = _drills.ROOT
STAGES = _drills.STAGES
_children = []


def command(workdir, *extra):
  return _drills.smoke_command(workdir, "--verbose=0", *extra)


def free_ports(n):
  """n distinct TCP ports free on 127.0.0.1 now (held open together while picked)."""
  socks = []
  try:
    for _ in range(n):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(("127.0.0.1", 0))
      socks.append(s)
    return [s.getsockname()[1] for s in socks]
  finally:
    for s in socks:
      s.close()


def environment(tf_config=None, tmpdir=None):
  env = _drills.environment(tf_config=tf_config, tmpdir=tmpdir)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def start(cmd, env, log_path):
  log = open(log_path, "ab")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
  log.close()
  _children.append(proc)
  return proc


def kill(proc):
  """SIGKILLs `proc` and its process group (it leads its own session), then reaps it."""
  _drills.kill(proc, group=True)


def kill_all_children():
  for proc in _children:
    kill(proc)


def wait_all(procs, timeout):
  """Waits for every process; kills the rest and raises RuntimeError after `timeout` s."""
  deadline = time.time() + timeout
  for proc in procs:
    try:
      proc.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for p in procs:
        kill(p)
      raise RuntimeError(f"timed out after {timeout:.0f} s") from None
  return [p.returncode for p in procs]


def tail(path, n=800):
  with open(path, errors="replace") as f:
    return f.read()[-n:].strip()


class Cluster:
  """Two workers on loopback, each with its own TMPDIR and log; worker 0 is the chief."""

  def __init__(self, root, name, workdir, trace=False):
    self.root, self.name, self.workdir, self.trace = root, name, workdir, trace
    ports = free_ports(2)
    self.cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    self.tmpdirs = [os.path.join(root, f"{name}_tmp_worker{i}") for i in range(2)]
    for d in self.tmpdirs:
      os.makedirs(d, exist_ok=True)
    self.attempt = 0
    self.procs = []

  def log(self, i):
    return os.path.join(self.root, f"{self.name}_{self.attempt}_worker{i}.log")

  def trace_file(self, i):
    return os.path.join(self.root, f"{self.name}_{self.attempt}_worker{i}.strace")

  def start(self):
    self.attempt += 1
    self.procs = []
    for i in range(2):
      tf_config = {"cluster": self.cluster, "task": {"type": "worker", "index": i}}
      cmd = command(self.workdir, "--strategy=multi_worker")
      if self.trace and i == 1:
        cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-o", self.trace_file(i), "-e",
               "trace=openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,"
               "unlinkat,rmdir,truncate", *cmd]
      self.procs.append(start(cmd, environment(tf_config, self.tmpdirs[i]), self.log(i)))
    return self.procs

  def run(self, timeout):
    codes = wait_all(self.start(), timeout)
    if codes != [0, 0]:
      raise RuntimeError(f"{self.name}: exit codes {codes}: worker0: {tail(self.log(0))} | "
                         f"worker1: {tail(self.log(1))}")


weights = _drills.stage_weights


def max_diff(a, b):
  if a.keys() != b.keys():
    return float("inf")
  return max(float(np.max(np.abs(a[n].astype(np.float64) - b[n]))) if a[n].size else 0.0
             for n in a)


def listing(workdir):
  """Relative paths under `workdir`, TensorBoard event files reduced to their folder."""
  out = set()
  for dirpath, _, files in os.walk(workdir):
    for f in files:
      rel = os.path.relpath(os.path.join(dirpath, f), workdir)
      out.add(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", rel))
  return out


_WRITE_CALL = re.compile(r'^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)')


def traced_writes(trace_path, workdir):
  """Successful calls of the traced process that write, create or remove under `workdir`."""
  workdir = os.path.realpath(workdir)
  hits = []
  with open(trace_path, errors="replace") as f:
    for line in f:
      m = _WRITE_CALL.match(line)
      if not m or int(m.group(4)) < 0:
        continue
      call, args = m.group(2), m.group(3)
      if call in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
        continue
      for path in re.findall(r'"([^"]*)"', args):
        full = os.path.realpath(path if os.path.isabs(path) else os.path.join(ROOT, path))
        if full == workdir or full.startswith(workdir + os.sep):
          hits.append(f"{call} {path}")
  return hits


def event_pids(workdir):
  pids = set()
  for path in glob.glob(os.path.join(workdir, "logs", "**", "events.out.tfevents.*"),
                        recursive=True):
    m = re.match(r"events\.out\.tfevents\.\d+\.[^.]+(?:\..*)?\.(\d+)\.\d+\.v2$",
                 os.path.basename(path))
    if m:
      pids.add(int(m.group(1)))
  return pids


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/psl_tf_mw_drill")
  parser.add_argument("--seed", type=int, default=0, help="seed of the kill delay")
  parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
  parser.add_argument("--survivor_timeout", type=float, default=120,
                      help="seconds the surviving worker may take to stop after the kill")
  parser.add_argument("--kill_worker", type=int, default=1, choices=(0, 1),
                      help="the worker to SIGKILL (0 is the chief)")
  parser.add_argument("--kill_stage", type=int, default=2, choices=range(1, STAGES + 1))
  parser.add_argument("--max_delay", type=float, default=0.3,
                      help="largest delay (s) of the kill after the epoch checkpoint (a smoke "
                      "epoch takes about a second)")
  parser.add_argument("--atol", type=float, default=1e-5,
                      help="largest allowed |multi-worker - twin| of any weight")
  parser.add_argument("--no_strace", action="store_true")
  parser.add_argument("--json", default="", help="write the results here")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  shutil.rmtree(args.root, ignore_errors=True)
  os.makedirs(args.root)
  results = {}
  problems = []

  def report(name, ok, text, **extra):
    results[name] = {"ok": ok, "text": text, **extra}
    if not ok:
      problems.append(name)
    print(f"{name:22s} {'ok' if ok else 'FAILED'}: {text}", flush=True)

  start_all = time.time()
  try:
    # 1. The one-process twin.
    twin_dir = os.path.join(args.root, "twin")
    t = time.time()
    proc = start(command(twin_dir, "--strategy=mirrored", "--cpu_replicas=2"),
                 environment(), os.path.join(args.root, "twin.log"))
    codes = wait_all([proc], args.timeout)
    if codes != [0]:
      raise RuntimeError(f"twin: exit {codes[0]}: {tail(os.path.join(args.root, 'twin.log'))}")
    twin = weights(twin_dir)
    print(f"twin run (mirrored, 2 CPU replicas): {time.time() - t:.0f} s, {len(twin)} weight "
          "arrays", flush=True)

    # 2. Two workers.
    trace = not args.no_strace and shutil.which("strace") is not None
    mw_dir = os.path.join(args.root, "multi_worker")
    cluster = Cluster(args.root, "multi_worker", mw_dir, trace=trace)
    t = time.time()
    cluster.run(args.timeout)
    mw_seconds = time.time() - t
    print(f"multi-worker run (2 workers, {cluster.cluster['worker']}): {mw_seconds:.0f} s",
          flush=True)
    mw = weights(mw_dir)
    diff = max_diff(twin, mw)
    report("weights_vs_twin", diff <= args.atol,
           f"max |multi-worker - twin| over {len(mw)} arrays = {diff:.3g} "
           f"({'bit-identical' if diff == 0 else f'atol {args.atol:g}'})", max_abs_diff=diff)
    same_files = listing(mw_dir) == listing(twin_dir)
    report("chief_files", same_files,
           "the work directory holds the twin's files" if same_files else
           f"differs from the twin's: {sorted(listing(mw_dir) ^ listing(twin_dir))[:6]}")
    if trace:
      hits = traced_writes(cluster.trace_file(1), mw_dir)
      report("non_chief_writes", not hits,
             "strace: the non-chief wrote nothing under the work directory" if not hits else
             f"the non-chief wrote under the work directory: {hits[:5]}")
    pids = event_pids(mw_dir)
    report("event_files", pids == {cluster.procs[0].pid},
           f"TensorBoard event files in the work directory come from process(es) "
           f"{sorted(pids)}; the chief is {cluster.procs[0].pid}")
    private = [p for p in glob.glob(os.path.join(cluster.tmpdirs[1], "psl_tf_worker_*", "**"),
                                    recursive=True) if os.path.isfile(p)]
    report("non_chief_private_dir", bool(private),
           f"the non-chief wrote {len(private)} file(s) under its TMPDIR "
           f"({cluster.tmpdirs[1]})")

    # 3. Kill one worker mid-stage, restart both.
    kill_dir = os.path.join(args.root, "killed")
    killed = Cluster(args.root, "killed", kill_dir)
    procs = killed.start()
    ckpt = os.path.join(kill_dir, f"stage_{args.kill_stage}", "ckpt", "checkpoint")
    deadline = time.time() + args.timeout
    while (not os.path.exists(ckpt) and all(p.poll() is None for p in procs)
           and time.time() < deadline):
      time.sleep(0.05)
    if not os.path.exists(ckpt):
      raise RuntimeError(f"no epoch checkpoint of stage {args.kill_stage} appeared (exit codes "
                         f"{[p.poll() for p in procs]}): {tail(killed.log(0))}")
    with open(ckpt) as f:
      checkpoint_line = f.readline().strip()
    delay = rng.uniform(0.0, args.max_delay)
    time.sleep(delay)
    victim, survivor = procs[args.kill_worker], procs[1 - args.kill_worker]
    kill(victim)
    mid_stage = not os.path.exists(os.path.join(kill_dir, f"stage_{args.kill_stage}", "DONE"))
    t = time.time()
    try:
      survivor.wait(timeout=args.survivor_timeout)
      survivor_text = (f"the survivor (worker {1 - args.kill_worker}) stopped by itself "
                       f"{time.time() - t:.1f} s later, exit {survivor.returncode}")
      survivor_ok = True
    except subprocess.TimeoutExpired:
      kill(survivor)
      survivor_text = (f"the survivor (worker {1 - args.kill_worker}) was still running "
                       f"{args.survivor_timeout:.0f} s after the kill; killed")
      survivor_ok = False
    report("kill", _drills.killed(victim.returncode) and mid_stage,
           f"worker {args.kill_worker} SIGKILLed {delay:.2f} s after the chief's first epoch "
           f"checkpoint of stage {args.kill_stage} ({checkpoint_line}); "
           f"{'mid-stage' if mid_stage else 'too late: the stage had finished'}")
    report("survivor_stops", survivor_ok, survivor_text,
           survivor_log=tail(killed.log(1 - args.kill_worker), 400))
    t = time.time()
    killed.run(args.timeout)
    restart_seconds = time.time() - t
    with open(killed.log(0), errors="replace") as f:
      resumed = re.findall(rf"resuming stage {args.kill_stage} from epoch (\d+)", f.read())
    with open(killed.log(1), errors="replace") as f:
      resumed_other = re.findall(rf"resuming stage {args.kill_stage} from epoch (\d+)", f.read())
    report("resumed", bool(resumed) and resumed == resumed_other,
           f"restart ({restart_seconds:.0f} s): chief resumed stage {args.kill_stage} from epoch "
           f"{resumed}, the other worker from epoch {resumed_other}")
    diff = max_diff(mw, weights(kill_dir))
    report("weights_after_restart", diff == 0,
           f"max |restarted - uninterrupted multi-worker| = {diff:.3g}", max_abs_diff=diff)
    with open(os.path.join(kill_dir, "summary.json")) as f:
      stages = [s["stage"] for s in json.load(f).get("stages", [])]
    report("summary", stages == list(range(1, STAGES + 1)), f"summary.json stages {stages}")
  except (RuntimeError, OSError, KeyError, ValueError) as e:
    report("drill", False, str(e))
  finally:
    kill_all_children()
  print(f"{'all checks passed' if not problems else 'FAILED: ' + ', '.join(problems)} "
        f"({time.time() - start_all:.0f} s)", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"ok": not problems, "checks": results,
                 "seconds": round(time.time() - start_all, 1)}, f, indent=2)
  return 0 if not problems else 1


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # finally: kills the children
  sys.exit(main())
