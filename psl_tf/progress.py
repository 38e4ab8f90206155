"""What a person watching a run sees: progress lines while it runs, a table when it ends.

* `RunProgress` knows the whole run (every stage's epochs x steps) and gives each stage's
  `fit` a Keras callback that prints one plain line per epoch: stage k/n, epoch, loss,
  pretext accuracy, images/s and an ETA for the rest of the *run*, not just the stage.
* Keras' own progress bar redraws itself with carriage returns and ANSI colour codes; that is
  right on a terminal and garbage in a log file. `fit_verbose` keeps the bar only when stdout
  is a TTY; otherwise the plain epoch lines are all there is.
* `summary_table` turns `summary.json` into the end-of-run table (train and held-out pretext
  accuracy beside chance), with warnings for stages that ended near chance or whose loss rose,
  and the next commands to run.
"""

import sys
import time

import keras

from psl_tf import guards

# A stage whose pretext accuracy is below both this multiple of chance and this fraction of
# the way from chance to 100 % gets a warning: it has learnt little or nothing (the demo runs
# are made to clear it at every stage). The multiple judges many-class levels (MoCo's 1.5 %
# against 0.19 % has learnt), the fraction few-class ones (70 % on two angles has learnt).
CHANCE_MARGIN = 1.5
CHANCE_GAP = 0.1


def near_chance_threshold(chance):
  """The accuracy below which a stage has learnt little at a level with this `chance`."""
  return min(CHANCE_MARGIN * chance, chance + CHANCE_GAP * (1.0 - chance))


def is_terminal(stream=None):
  """True when `stream` (default stdout) is an interactive terminal."""
  stream = stream or sys.stdout
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # closed or replaced streams (notebooks, pytest)
    return False


def fit_verbose(verbose, stream=None):
  """Keras `fit` verbosity for the `--verbose` flag: the progress bar (1) only on a terminal;
  plain epoch lines (from `RunProgress`) replace it elsewhere and for verbose=2."""
  return 1 if verbose == 1 and is_terminal(stream) else 0


def format_duration(seconds):
  """'42s', '3m05s', '1h02m'."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def percent(value):
  """0.853 -> '85.3 %'; chances below 1 % keep two significant digits (1/2000 -> '0.05 %')."""
  if value is None:
    return "–"
  if 0 < 100 * value < 1:
    return f"{100 * value:.2g} %"
  return f"{100 * value:.1f} %"


class RunProgress:
  """Progress of a whole run over its stages.

  Args:
    stage_steps: {stage index: total steps of the stage} for every stage of the run.
    batch_size: global batch size (images per step).
    log: where lines go.
    verbose: the --verbose flag (0: no epoch lines).
    clock: time source (tests pass a fake).
  """

  def __init__(self, stage_steps, batch_size, log=print, verbose=1, clock=time.monotonic,
               accuracy_name="pretext acc"):
    self.stage_steps = dict(stage_steps)
    self.accuracy_name = accuracy_name
    self.batch_size = batch_size
    self.log = log
    self.verbose = verbose
    self.clock = clock
    self.done_steps = 0  # steps finished (or skipped as already finished) in this run
    self.timed_steps = 0  # steps actually trained in this process, for the rate
    self.timed_seconds = 0.0

  @property
  def total_steps(self):
    return sum(self.stage_steps.values())

  def skip(self, steps):
    """Counts steps that were already done (a finished stage or resumed epochs)."""
    self.done_steps += steps

  def eta(self):
    """Seconds left for the run at the rate measured so far, or None before any step."""
    if not self.timed_steps or self.timed_seconds <= 0:
      return None
    return (self.total_steps - self.done_steps) * self.timed_seconds / self.timed_steps

  def epoch_line(self, label, epoch, epochs, logs, seconds, steps):
    rate = steps * self.batch_size / seconds if seconds > 0 else 0.0
    parts = [f"[{label}] epoch {epoch}/{epochs}"]
    if logs and "loss" in logs:
      parts.append(f"loss {float(logs['loss']):.4f}")
    if logs and "accuracy" in logs:
      parts.append(f"{self.accuracy_name} {percent(float(logs['accuracy']))}")
    parts.append(f"{rate:.0f} img/s")
    eta = self.eta()
    run_done = 100.0 * self.done_steps / max(1, self.total_steps)
    parts.append(f"run {run_done:.0f} % done, ETA {format_duration(eta) if eta is not None else '?'}")
    return " | ".join(parts)

  def callback(self, stage, num_stages, epochs, steps_per_epoch, label=None):
    """A Keras callback for one stage's `fit` that prints the epoch lines, each starting
    with `[label]` (default: `[stage k/n]`)."""
    return _EpochProgress(self, label or f"stage {stage}/{num_stages}", epochs, steps_per_epoch)


def fit_progress(label, epochs, steps_per_epoch, batch_size, log=print):
  """A Keras callback printing `[label] epoch e/E | loss | img/s | ETA` lines for one `fit`
  (linear probes, fine-tuning)."""
  run = RunProgress({1: epochs * steps_per_epoch}, batch_size, log, accuracy_name="acc")
  return run.callback(1, 1, epochs, steps_per_epoch, label=label)


class _EpochProgress(keras.callbacks.Callback):

  def __init__(self, run, label, epochs, steps_per_epoch):
    super().__init__()
    self.run = run
    self.label = label
    self.epochs = epochs
    self.steps = steps_per_epoch
    self._start = None

  def on_epoch_begin(self, epoch, logs=None):
    self._start = self.run.clock()

  def on_epoch_end(self, epoch, logs=None):
    seconds = self.run.clock() - (self._start if self._start is not None else self.run.clock())
    run = self.run
    run.done_steps += self.steps
    run.timed_steps += self.steps
    run.timed_seconds += seconds
    if run.verbose:
      run.log(run.epoch_line(self.label, epoch + 1, self.epochs, logs, seconds, self.steps))
      sys.stdout.flush()  # a log file behind a pipe gets each line when it happens


# ---- the end-of-run table -----------------------------------------------------------------

def stage_warnings(stage):
  """Warnings about one stage summary: accuracy near chance, a held-out accuracy on fewer
  than 50 images, loss that rose."""
  warnings = []
  chance = stage.get("chance")
  for key, what in (("heldout_pretext_accuracy", "held-out"), ("pretext_accuracy", "training")):
    accuracy = stage.get(key)
    if accuracy is None or not chance:
      continue
    if accuracy < near_chance_threshold(chance):
      warnings.append(f"stage {stage['stage']}: {what} pretext accuracy {percent(accuracy)} is "
                      f"near chance ({percent(chance)}; below "
                      f"{percent(near_chance_threshold(chance))}): it has learnt little; train "
                      "longer, raise --learning_rate or use larger images")
    break  # judge by held-out accuracy when there is one
  small = guards.small_heldout_warning(stage["stage"], stage.get("heldout_images"))
  if small:
    warnings.append(small)
  losses = stage.get("epoch_losses") or []
  if len(losses) >= 2 and losses[-1] > losses[0]:
    warnings.append(f"stage {stage['stage']}: loss rose from {losses[0]:.4f} (first epoch) to "
                    f"{losses[-1]:.4f} (last); the learning rate may be too high")
  return warnings


def summary_table(summary, workdir, exported=None):
  """The end-of-run report as text: a table, warnings and the next commands."""
  stages = summary.get("stages", [])
  header = ("stage", "blocks", "level", "steps", "loss", "train acc", "held-out acc", "chance",
            "img/s", "wall")
  rows = []
  for s in stages:
    blocks = s.get("blocks") or []
    rows.append((
        str(s.get("stage")),
        f"B{blocks[0]}-B{blocks[1]}" if len(blocks) == 2 and blocks[0] != blocks[1]
        else (f"B{blocks[0]}" if blocks else "?"),
        str(s.get("level")),
        str(s.get("steps")),
        "–" if s.get("final_loss") is None else f"{s['final_loss']:.3f}",
        percent(s.get("pretext_accuracy")),
        percent(s.get("heldout_pretext_accuracy")),
        percent(s.get("chance")),
        "–" if not s.get("images_per_second") else f"{s['images_per_second']:.0f}",
        "–" if s.get("wall_time_s") is None else format_duration(s["wall_time_s"]),
    ))
  widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(header)]
  def line(cells):
    return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))
  title = (f"{summary.get('task')} {summary.get('mode')} on {summary.get('dataset')} "
           f"({summary.get('backbone')}, {summary.get('image_size')} px, batch "
           f"{summary.get('batch_size')})")
  out = [f"== summary: {title}", line(header), line(["-" * w for w in widths])]
  out += [line(r) for r in rows]
  heldout = [s.get("heldout_images") for s in stages if s.get("heldout_images")]
  if heldout:
    out.append(f"held-out accuracy: the pretext task on {heldout[-1]} images of the held-out "
               "split (evaluation view); chance: guessing")
  warnings = [w for s in stages for w in stage_warnings(s)]
  out += [f"WARNING: {w}" for w in warnings]
  out.append(f"work directory: {workdir}")
  if exported:
    out.append(f"SavedModel: {exported}")
  out.append("next:")
  out.append(f"  python -m psl_tf.evaluate --workdir={workdir}    # linear probes on B1..B5")
  out.append(f"  python -m psl_tf.export --workdir={workdir}      # SavedModel + backbone.keras")
  out.append(f"  tensorboard --logdir={workdir}/logs")
  return "\n".join(out)
