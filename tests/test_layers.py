"""The package's layers follow the flow: data and metrics at the bottom, the training code
above them, evaluation above training, tasks above both, the study and the report on top.
Read from the import graph of the source (every import, also those inside functions)."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "derm_jax")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str) -> set[str]:
  """Every derm_jax module `path` imports (`from derm_jax.x import y` counts as x and x.y)."""
  tree = ast.parse(open(path).read(), path)
  me = _module_name(path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("derm_jax"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        parts = me.split(".")[: -node.level]
        base = ".".join(parts + ([base] if base else []))
      if base.startswith("derm_jax"):
        out.add(base)
        out.update(f"{base}.{a.name}" for a in node.names)
  return out


def _graph() -> dict[str, set[str]]:
  graph = {}
  for root, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        graph[_module_name(path)] = _imports(path)
  return graph


def _offenders(graph, below: str, above: tuple[str, ...]) -> list[str]:
  return sorted(f"{m} -> {i}" for m, imps in graph.items() if m.startswith(below)
                for i in imps if i.startswith(above))


def test_training_never_imports_evaluation_tasks_study_or_report():
  graph = _graph()
  assert "derm_jax.train.loop" in graph and graph["derm_jax.train.loop"]
  assert _offenders(graph, "derm_jax.train", ("derm_jax.evaluation", "derm_jax.tasks",
                                             "derm_jax.study", "derm_jax.report")) == []


def test_evaluation_never_imports_tasks_the_loop_study_or_report():
  graph = _graph()
  assert _offenders(graph, "derm_jax.evaluation", (
      "derm_jax.tasks", "derm_jax.train.loop", "derm_jax.study", "derm_jax.report")) == []


def test_data_and_models_never_import_what_stands_above_them():
  graph = _graph()
  above = ("derm_jax.evaluation", "derm_jax.train", "derm_jax.tasks", "derm_jax.study",
           "derm_jax.report")
  assert _offenders(graph, "derm_jax.data", above) == []
  assert _offenders(graph, "derm_jax.models", above) == []


def test_tables_metrics_and_layout_are_free_of_jax_and_of_the_layers_above():
  for name in ("arms", "layout", "metrics", "tasks/registry", "study/plan"):
    src = open(os.path.join(PKG, f"{name}.py")).read()
    imports = _imports(os.path.join(PKG, f"{name}.py"))
    assert "import jax" not in src and "from jax" not in src, name
    assert not [i for i in imports if i.startswith(("derm_jax.train", "derm_jax.evaluation",
                                                     "derm_jax.report"))], name
