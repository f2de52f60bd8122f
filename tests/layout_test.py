"""The package's layout holds: imports run one way between its folders, there are no import circles, no
caller outside `models/` branches on the model kind, and benchmarks import the package, never `tests/`.

Read from the source with `ast` (nothing is imported), so a broken direction fails here by name.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ntm_jax"

# Each part of the package and the parts it may import (besides itself). Lower layers never import higher
# ones: models and text import nothing of ntm_jax; nothing imports main.
LOWER = {
    "text": set(),
    "models": set(),
    "config_args": set(),
    "data": {"text"},
    "parallel": {"models"},
    "latents": {"models", "data", "text", "parallel"},
    "sampling": {"models", "data", "text", "parallel", "latents"},
    "evaluation": {"models", "data", "text", "parallel", "latents", "sampling"},
    "training": {"models", "data", "text", "parallel", "latents", "sampling", "evaluation"},
    "modes": {"models", "data", "text", "parallel", "latents", "sampling", "evaluation", "training"},
    "api": {"models", "data", "text", "parallel", "latents", "sampling", "evaluation"},
    "main": {"config_args", "modes", "parallel"},  # parallel: host_malloc, set before jax starts
    "__init__": {"api"},
}
MODEL_CLASSES = {"NTM", "TarFlow", "FlowMatching"}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
  """The folder (or top-level module) of a dotted ntm_jax module name."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every ntm_jax module `path` imports, anywhere in the file, resolved to a module or package name."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names if alias.name.startswith("ntm_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ntm_jax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        is_module = (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() or (
            ROOT / candidate.replace(".", "/")).is_dir()
        found.add(candidate if is_module else node.module)
  return found


def package_files():
  return sorted(PACKAGE.rglob("*.py"))


def test_imports_run_one_way_between_the_parts_of_the_package():
  wrong = []
  for path in package_files():
    here = part_of(module_name(path))
    assert here in LOWER, f"{path.relative_to(ROOT)} is in a part the layout test does not know: add it to LOWER"
    for imported in imported_modules(path):
      there = part_of(imported)
      if there != here and there not in LOWER[here]:
        wrong.append(f"{path.relative_to(ROOT)} imports {imported} ({here} -> {there})")
  assert not wrong, "imports against the layout's direction:\n" + "\n".join(wrong)


def test_there_are_no_import_circles():
  graph = {module_name(path): {m for m in imported_modules(path)} for path in package_files()}
  graph = {module: {m for m in edges if m in graph and m != module} for module, edges in graph.items()}
  # A package's __init__ may gather its own submodules; a circle through it would still show up below.
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(module):
    state[module] = 1
    stack.append(module)
    for nxt in sorted(graph[module]):
      if state.get(nxt) == 1:
        raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module)


def kind_branches(path: pathlib.Path) -> list[str]:
  """Comparisons with a model kind, lookups by it and isinstance checks on model classes in `path`."""
  found = []
  is_kind = lambda node: (isinstance(node, ast.Attribute) and node.attr == "kind") or (
      isinstance(node, ast.Name) and node.id == "kind")
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Compare) and any(is_kind(n) for n in [node.left, *node.comparators]):
      found.append(f"{path.relative_to(ROOT)}:{node.lineno} compares the model kind")
    elif isinstance(node, ast.Subscript) and is_kind(node.slice):
      found.append(f"{path.relative_to(ROOT)}:{node.lineno} looks something up by the model kind")
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
          and MODEL_CLASSES & {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}):
      found.append(f"{path.relative_to(ROOT)}:{node.lineno} checks the model's class")
  return found


def test_no_caller_outside_models_branches_on_the_model_kind():
  callers = [p for p in package_files() if "models" not in p.relative_to(PACKAGE).parts]
  callers += sorted((ROOT / "benchmarks").glob("*.py"))
  found = [line for path in callers for line in kind_branches(path)]
  assert not found, "use the model interface (ntm_jax.models.generative) instead:\n" + "\n".join(found)


def test_the_kind_check_sees_a_branch():
  """The check above can fail: a file that branches on the kind is caught."""
  probe = ROOT / "tests" / "data" / "kind_branch_probe.py.txt"
  assert len(kind_branches(probe)) == 3


def test_benchmarks_import_the_package_never_the_tests():
  for path in sorted((ROOT / "benchmarks").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n == "tests" or n.startswith("tests.") for n in names), f"{path.name} imports {names}"
