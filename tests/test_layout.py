"""The package's layout: no import cycle among ``vdrnn`` modules, no module-level imports hidden
in functions (except optional dependencies, marked ``noqa: PLC0415``), the top level the
design names, and Python lines within 100 columns."""

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules():
  for path in sorted((ROOT / "vdrnn").rglob("*.py")):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


def _imports(path: Path, name: str) -> set:
  """The ``vdrnn`` modules ``path`` imports at module level."""
  out = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("vdrnn")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vdrnn"):
      out.add(node.module)
      out |= {f"{node.module}.{a.name}" for a in node.names}
  return out


def test_no_import_cycle_among_vdrnn_modules():
  mods = dict(_modules())
  graph = {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}
  # A package's __init__ importing its own submodules is not a cycle of concern.
  graph = {m: {i for i in deps if not m.startswith(i + ".") and not i.startswith(m + ".")}
           for m, deps in graph.items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for d in graph[m]:
      if state.get(d) == "open":
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = "done"

  for m in graph:
    if m not in state:
      visit(m)


def test_function_level_imports_are_optional_dependencies_only():
  found = []
  for name, path in _modules():
    src = path.read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(src))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, (ast.Import, ast.ImportFrom)):
            line = src[inner.lineno - 1]
            if "noqa: PLC0415" not in line:
              found.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {line.strip()}")
  assert not found, "\n".join(found)


def test_top_level_is_the_designs():
  tracked = {p for p in os.listdir(ROOT) if not p.startswith(".")}
  allowed = {"pyproject.toml", "vdrnn", "configs", "launch", "tests", "README.md", "workdirs"}
  extra = tracked - allowed - {"build", "dist", "vdrnn.egg-info", "__pycache__", "data"}
  assert not extra, extra


def test_python_lines_are_within_100_columns():
  long = [f"{p.relative_to(ROOT)}:{i}" for d in ("vdrnn", "configs", "launch", "tests")
          for p in sorted((ROOT / d).rglob("*.py"))
          for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 100]
  assert not long, long
