"""`import psl_tf` and every module of it: no import cycle, and each imports in a fresh process.

The static check walks the package's own imports at module level (absolute `psl_tf...` and
relative ones; imports inside functions run later and are not part of the graph, those under
`if TYPE_CHECKING:` never run) and fails on
any cycle, whatever order a program would import the modules in. The dynamic check imports
every module in a fresh interpreter, so nothing depends on what an earlier test imported.
"""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "psl_tf")


def _modules():
  """{dotted name: file} of every module of the package."""
  found = {}
  for dirpath, dirnames, names in os.walk(PACKAGE):
    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
    if "__init__.py" not in names:
      continue  # data folders (psl_tf/flags), not packages
    for name in names:
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(dirpath, name), ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        found[".".join(parts)] = os.path.join(dirpath, name)
  return found


def _is_main_guard(test):
  return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
          and test.left.id == "__name__" and isinstance(test.comparators[0], ast.Constant)
          and test.comparators[0].value == "__main__")


def _is_type_checking_guard(test):
  """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): imports only a type checker follows."""
  return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or
          (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _module_level(body):
  """The import statements that run when the module is imported (not inside a def or class)."""
  for node in body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, ast.If) and _is_main_guard(node.test):
      continue  # runs only as `python -m ...`, after every import of the package
    elif isinstance(node, ast.If) and _is_type_checking_guard(node.test):
      continue  # never runs
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
      for field in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(node, field, []):
          yield from _module_level(getattr(child, "body", [child]) if isinstance(
              child, ast.ExceptHandler) else [child])


def _everywhere(tree):
  """Every import statement, in functions too, except under `if __name__ == "__main__"` and
  `if TYPE_CHECKING:` (which never runs)."""
  main_guards = [n for n in tree.body if isinstance(n, ast.If) and (
      _is_main_guard(n.test) or _is_type_checking_guard(n.test))]
  skipped = {id(n) for guard in main_guards for n in ast.walk(guard)}
  return [n for n in ast.walk(tree)
          if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def import_graph(deferred=False):
  """{module: set of package modules it imports at module level}; with `deferred`, also the
  imports inside functions (run later, but still a dependency)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    edges = set()
    statements = _everywhere(tree) if deferred else _module_level(tree.body)
    for node in statements:
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      else:
        if node.level:
          base = package.split(".")
          base = base[:len(base) - (node.level - 1)]
          origin = ".".join(base + ([node.module] if node.module else []))
        else:
          origin = node.module
        # `from a import b`: the submodule a.b when there is one, else a itself.
        targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                   for alias in node.names]
      edges |= {t for t in targets if t in modules and t != name}
    graph[name] = edges
  return graph


def find_cycle(graph):
  """One cycle of `graph` as a list of modules (first == last), or None."""
  state = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt, path)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [])
      if cycle:
        return cycle
  return None


def test_the_walk_sees_the_package_and_finds_a_cycle():
  graph = import_graph()
  assert {"psl_tf", "psl_tf.config", "psl_tf.options", "psl_tf.tasks.base"} <= set(graph)
  assert "psl_tf.options" in graph["psl_tf.tasks.rotation"]  # `from psl_tf import options`
  assert "psl_tf.tasks" in graph["psl_tf.config"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_through_deferred_imports_either():
  # An import moved into a function hides a cycle from Python, not from the design:
  # config <-> tasks was one (config imported the tasks in its functions, the tasks imported
  # config for the option machinery).
  cycle = find_cycle(import_graph(deferred=True))
  assert cycle is None, "import cycle through deferred imports: " + " -> ".join(cycle)


def test_the_option_machinery_imports_nothing_of_the_package():
  # What declares options (tasks, evaluation settings, the command line) imports
  # psl_tf.options, never psl_tf.config: config imports the tasks.
  graph = import_graph()
  assert graph["psl_tf.options"] == set()
  for name, edges in graph.items():
    if name.startswith("psl_tf.tasks"):
      assert "psl_tf.config" not in edges, name


def test_every_module_imports_in_a_fresh_interpreter():
  names = sorted(_modules())
  code = ("import importlib, sys\n"
          f"for name in {names!r}:\n"
          "  importlib.import_module(name)\n"
          "print('imported', len(sys.modules))\n")
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "imported" in result.stdout
