"""Pretext-task ladders, registered by name in one explicit table."""

from psl_tf.tasks import jigsaw
from psl_tf.tasks import mocov2
from psl_tf.tasks import rotation
from psl_tf.tasks import simclr
from psl_tf.tasks.base import ImageSpec, Task

# name -> Task subclass. Add new tasks here; `build_task` lists these names on a typo.
TASKS = {
    "jigsaw": jigsaw.JigsawTask,
    "mocov2": mocov2.MoCoV2Task,
    "rotation": rotation.RotationTask,
    "simclr": simclr.SimCLRTask,
}


def get_task_class(name):
  """The registered Task class; raises ValueError naming the known ones."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
  return TASKS[name]


def build_task(name, config=None, **kwargs):
  """Builds a task from a `Config` (`build_task(name, config)`) or from keyword arguments."""
  cls = get_task_class(name)
  return cls.from_config(config) if config is not None else cls(**kwargs)
