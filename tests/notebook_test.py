"""The Colab notebook stays in step with the code: valid, and every command it runs exists."""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = [os.path.join(ROOT, "notebooks", n)
             for n in sorted(os.listdir(os.path.join(ROOT, "notebooks"))) if n.endswith(".ipynb")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_cells_parse_and_commands_exist(path):
  with open(path) as f:
    notebook = json.load(f)
  assert notebook["nbformat"] == 4
  code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
  assert code
  for cell in code:
    # The notebooks call the Python API (psl_tf.pretrain / evaluate / export), not `!python`.
    assert "!python -m psl_tf" not in cell, cell
    python = "\n".join(l for l in cell.splitlines() if not l.lstrip().startswith(("!", "%")))
    ast.parse(python)
    for module in re.findall(r"python -m (psl_tf\.\w+)", cell):
      assert os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py"), module
    for flagfile in re.findall(r"--flagfile=(flags/[\w.]+)", cell):
      assert os.path.isfile(os.path.join(ROOT, flagfile)), flagfile


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped_and_starts_with_a_colab_install_cell(path):
  with open(path) as f:
    notebook = json.load(f)
  code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
  for cell in code:  # outputs belong to a run, not to the repository
    assert cell["outputs"] == [] and cell["execution_count"] is None
  first = "".join(code[0]["source"])
  assert "google.colab" in first and "pip" in first
  install = _pip_install(first)
  # The package with its lower bounds, never the exact pins nor Colab's own packages again.
  assert install[-2:] == ["-e", "."] and "--upgrade-strategy=only-if-needed" in install
  for word in ("requirements.txt", "tensorflow", "numpy", "ipykernel", "--force-reinstall",
               "-U", "--upgrade", "--no-deps"):
    assert word not in install, word


def _pip_install(cell):
  """The first cell's pip command (its PIP_INSTALL list)."""
  source = re.search(r"^PIP_INSTALL = (\[.*?\])", cell, re.S | re.M).group(1)
  return eval(source, {"sys": sys})  # pylint: disable=eval-used


@pytest.mark.slow  # integration tier: pip resolves the package against this environment
def test_colab_install_cell_keeps_the_installed_packages(tmp_path):
  """The first cell's pip command, dry-run against this environment (which has compatible
  TensorFlow, NumPy, ipykernel, as Colab does): pip would install psl_tf and nothing else."""
  setuptools = pytest.importorskip("setuptools")
  if int(setuptools.__version__.split(".")[0]) < 77:
    pytest.skip("needs setuptools>=77 (requirements-test.txt) to build without isolation")
  with open(NOTEBOOKS[0]) as f:
    first = "".join(next(c for c in json.load(f)["cells"] if c["cell_type"] == "code")["source"])
  install = _pip_install(first)
  report = tmp_path / "report.json"
  result = subprocess.run(
      [*install[:4], "--dry-run", "--no-index", "--no-build-isolation", f"--report={report}",
       *install[4:-1], ROOT], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(report) as f:
    would_install = [item["metadata"]["name"] for item in json.load(f)["install"]]
  assert would_install == ["psl_tf"], would_install


def test_readme_lists_every_notebook():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  for path in NOTEBOOKS:
    assert f"notebooks/{os.path.basename(path)}" in readme


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes_end_to_end(path, tmp_path, monkeypatch):
  """Runs every cell in a fresh kernel at smoke size on the demo data (integration tier)."""
  nbclient = pytest.importorskip("nbclient")
  import nbformat  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("PSL_TF_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("PSL_TF_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("PYTHONPATH", ROOT)
  monkeypatch.delenv("PSL_TF_IMAGE_DIR", raising=False)
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": ROOT}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
  text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
  # A failing `!python -m ...` line does not stop the kernel: check what the commands printed.
  assert text.count("== summary:") >= 2  # both pre-training runs ended with their table
  assert "Traceback" not in text and "error:" not in text.lower()
