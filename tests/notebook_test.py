"""The Colab notebook stays in step with the code: valid, and every command it runs exists."""

import ast
import json
import os
import re

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
    python = "\n".join(l for l in cell.splitlines() if not l.lstrip().startswith(("!", "%")))
    ast.parse(python)
    for module in re.findall(r"python -m (psl_tf\.\w+)", cell):
      assert os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py"), module
    for flagfile in re.findall(r"--flagfile=(flags/[\w.]+)", cell):
      assert os.path.isfile(os.path.join(ROOT, flagfile)), flagfile
