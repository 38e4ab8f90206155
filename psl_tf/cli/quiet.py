"""Quiet start-up for the command-line entry points.

TensorFlow's C++ runtime prints several lines when it loads and when it first looks for GPUs
(oneDNN notes, missing CUDA drivers) before Python-side logging settings apply. On a
one-line error they would bury the line that matters, so entry points import TensorFlow
with file descriptor 2 pointed at /dev/null. Python exceptions are unaffected: they are
printed after stderr is restored. Set PSL_TF_VERBOSE_STARTUP=1 to see everything.
"""

import contextlib
import os
import sys


def import_tensorflow_quietly():
  """Imports TensorFlow and initialises its devices with stderr silenced; returns tf."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if os.environ.get("PSL_TF_VERBOSE_STARTUP"):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
  return tf


def one_line_flags_parser(program, flag_values=None):
  """An `app.run(flags_parser=...)` that reports a bad flag, a flagfile line with a trailing
  comment, or a stray positional argument in one line and exits with 2. It parses into
  `flag_values` (default: absl's global FLAGS)."""
  def parse(argv):
    from absl import flags  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    from psl_tf import guards  # pylint: disable=g-import-not-at-top
    try:
      guards.check_flagfiles(argv[1:])
      rest = (flag_values if flag_values is not None else flags.FLAGS)(argv)
    except (flags.Error, ValueError) as e:
      print(f"{program}: error: {e}", file=sys.stderr)
      sys.exit(2)
    if len(rest) > 1:
      print(f"{program}: error: unexpected arguments: {' '.join(rest[1:])} (flags are "
            "written --name=value)", file=sys.stderr)
      sys.exit(2)
    return rest
  return parse


def warnings_only_unless_asked():
  """absl logging at WARNING unless the user passed --verbosity: the output of our entry
  points is their progress bars and result lines, not library INFO logs."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def start(program, argv):
  """The first lines of every entry point's `main`: no positional arguments (one line, exit 2,
  also when `main` is called without the flags parser), then absl logging at WARNING unless
  the user asked for more."""
  if len(argv) > 1:
    print(f"{program}: error: unexpected arguments: {' '.join(argv[1:])} (flags are written "
          "--name=value)", file=sys.stderr)
    sys.exit(2)
  warnings_only_unless_asked()


@contextlib.contextmanager
def one_line_errors(program, exit_code=2, errors=(ValueError, OSError)):
  """Inside the block, `errors` (bad input: a wrong flag value, a missing work directory, an
  unreadable data set; DataError is a ValueError) end the program with one line on stderr and
  `exit_code` instead of a traceback."""
  try:
    yield
  except errors as e:
    print(f"{program}: error: {e}", file=sys.stderr)
    sys.exit(exit_code)


@contextlib.contextmanager
def interrupted(program, what_now):
  """Ctrl-C inside the block ends the program with one line (what was kept, what to do) and
  exit code 130, the shell's code for SIGINT, instead of a traceback.

  The SIGINT handler ends the process itself rather than raising KeyboardInterrupt: one
  raised while TensorFlow traces a step or builds an input pipeline can be swallowed there,
  and the program then ran on. Ending at any point is safe: what a run writes is written
  through temporary files and renames (the kill drill SIGKILLs it anywhere), and the work
  directory's lock goes with the process."""
  import signal  # pylint: disable=g-import-not-at-top

  def stop(signum, frame):  # pylint: disable=unused-argument
    sys.stdout.flush()
    print(f"{program}: interrupted (Ctrl-C); {what_now}", file=sys.stderr, flush=True)
    os._exit(130)  # pylint: disable=protected-access

  try:
    previous = signal.signal(signal.SIGINT, stop)
  except ValueError:  # not the main thread: leave Ctrl-C as it is
    previous = None
  try:
    yield
  except KeyboardInterrupt:
    stop(signal.SIGINT, None)
  finally:
    if previous is not None:
      signal.signal(signal.SIGINT, previous)
