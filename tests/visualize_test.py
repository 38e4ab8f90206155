"""`psl_tf.visualize`: the pictures show what each level really asks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from psl_tf import data
from psl_tf.tasks import visualize
from psl_tf.tasks import base
from psl_tf.tasks import jigsaw
from psl_tf.tasks import rotation
from psl_tf.tasks import simclr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = base.ImageSpec(32, 37)


@pytest.fixture(scope="module")
def image():
  images, _ = data.demo_arrays("test")
  return images[0]


def test_rotation_levels_show_exactly_their_angles(image):
  task = rotation.RotationTask(SPEC)
  panels = {level: visualize.level_panels(task, image, level) for level in (1, 2, 3)}
  assert [c for _, c in panels[1]] == ["0°", "180°"]
  assert sorted(c for _, c in panels[2]) == ["0°", "180°", "270°", "90°"]
  assert len(panels[3]) == 8
  upright = panels[1][0][0]
  assert upright.shape == (32, 32, 3)
  # R1's second picture is the first turned upside down; R2 adds the quarter turns.
  np.testing.assert_allclose(panels[1][1][0], np.rot90(upright, 2), atol=1e-4)
  np.testing.assert_allclose(panels[2][2][0], np.rot90(upright, 1), atol=1e-4)
  np.testing.assert_allclose(panels[2][3][0], np.rot90(upright, 3), atol=1e-4)
  for picture, _ in panels[3][4:]:  # 45-degree family: no quarter turn of the upright view
    assert min(np.abs(picture - np.rot90(upright, k)).mean() for k in range(4)) > 0.01


def test_jigsaw_levels_shuffle_with_their_own_permutations(image):
  task = jigsaw.JigsawTask(base.ImageSpec(64, 73), sizes=(10, 20, 40), head_hidden=8)
  for level in (1, 2, 3):
    panels = visualize.level_panels(task, image, level, seed=3)
    (ordered, _), (same, c0), (new, cnew) = panels
    assert ordered.shape == (3 * task.tile + 4,) * 2 + (3,)
    index = int(cnew.split()[1])
    low = task.sizes[level - 2] if level > 1 else 0
    assert low <= index < task.sizes[level - 1]  # a permutation this level adds
    t, g = task.tile, 2
    slot = lambda pic, s: pic[(s // 3) * (t + g):(s // 3) * (t + g) + t,
                              (s % 3) * (t + g):(s % 3) * (t + g) + t]
    perm = task.permutations(level)[index]
    for s in range(9):  # slot s holds the tile of grid cell perm[s]
      np.testing.assert_array_equal(slot(new, s), slot(ordered, perm[s]))
    assert c0 == f"perm 0 ∈ C{level}"


def test_contrastive_levels_add_colour_then_blur_and_sobel(image):
  task = simclr.SimCLRTask(SPEC, head_hidden=8, gray_prob=1.0)  # every T2/T3 view grey
  t1, t2, t3 = (visualize.level_panels(task, image, level) for level in (1, 2, 3))
  grey = lambda p: np.allclose(p[..., 0], p[..., 1], atol=1e-5) and np.allclose(
      p[..., 1], p[..., 2], atol=1e-5)
  assert not any(grey(p) for p, _ in t1)
  assert all(grey(p) for p, _ in t2)
  assert [c for _, c in t3][-1] == "Sobel" and "Sobel" not in [c for _, c in t2]
  sobel_view = t3[-1][0]
  assert sobel_view.shape == (32, 32, 3) and np.isclose(sobel_view.max(), 1.0)


def test_input_grid_of_each_task_batch():
  rot = visualize.input_grid(np.random.rand(5, 8, 8, 3))
  assert rot.shape == (1, 2 * 10, 3 * 10, 3) and rot.dtype == np.uint8
  jig = visualize.input_grid(np.random.randn(4, 9, 6, 6, 3))  # standardised tiles
  assert jig.shape == (1, 2 * (22 + 2), 2 * (22 + 2), 3)
  views = visualize.input_grid(np.random.rand(4, 2, 8, 8, 3))
  assert views.shape == (1, 2 * 10, 2 * 18, 3)


def test_stage_inputs_reach_tensorboard(tmp_path):
  task = rotation.RotationTask(SPEC)
  visualize.log_stage_inputs(str(tmp_path), task, 2, data.demo_source("test"), 8)
  events = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path)]
  tags = [v.tag for e in tf.compat.v1.train.summary_iterator(events[0])
          for v in e.summary.value]
  assert tags == ["inputs/level_2"]


def _check_ladder_png(output, task):
  picture = tf.io.decode_png(tf.io.read_file(output)).numpy()
  # One row per level; the rotation row of R3 is the widest (8 pictures).
  assert picture.shape[2] in (3, 4) and picture.shape[0] > 3 * 48
  if task == "rotation":
    assert picture.shape[1] > 8 * 48


def test_program_in_process_writes_the_rotation_ladder(tmp_path, capsys):
  # The program's main on its own flags, in this process (the child-process runs of every
  # task are the integration tier's; `python -m psl_tf.visualize` starts in the test below).
  from absl import flags  # pylint: disable=g-import-not-at-top
  from psl_tf.cli import visualize as cli  # pylint: disable=g-import-not-at-top
  output = os.path.join(tmp_path, "rotation.png")
  flag_values = cli.define_flags(flags.FlagValues())
  flag_values(["psl_tf.visualize", "--task=rotation", "--images=1", "--image_size=48",
               f"--output={output}"])
  cli.main(["psl_tf.visualize"], flag_values)
  assert f"wrote {output}: 1 image(s) x 3 levels of rotation" in capsys.readouterr().out
  _check_ladder_png(output, "rotation")


@pytest.mark.slow  # integration tier: a subprocess run of the CLI
@pytest.mark.parametrize("task", ["rotation", "jigsaw", "simclr", "mocov2"])
def test_cli_writes_one_png_per_task(task, tmp_path):
  output = os.path.join(tmp_path, f"{task}.png")
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, "-m", "psl_tf.visualize", f"--task={task}",
                           "--images=1", "--image_size=48", f"--output={output}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  _check_ladder_png(output, task)


def test_cli_unknown_task_is_one_line():
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, "-m", "psl_tf.visualize", "--task=nope"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
