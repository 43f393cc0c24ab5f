"""The resolved config as text, with the config file's comments (`--print_config`), and the
field paths nearest to an unknown one (the hint of a bad `--config.<field>`).

  python -m derm_jax.main --config=configs/compare.py:honest --config.seeds="(0,1)" \
      --print_config

prints one line per field, `dotted.path = value` (the value after the preset and the
command line's overrides), in the order the config file sets them, each under the comment
lines that stand above it in the file and with the comment at the end of its line. The
comments are read from the config file's `get_config` and from the functions it builds
parts with (`c.vae = vae_config.get_config()`, `c.data = config_lib.data()`): statements
at the top of a function body only, so the comments of a preset's `if` branch never
describe another preset's values.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import io
import os
import tokenize
from collections.abc import Iterator
from typing import Any

from ml_collections import ConfigDict

# Fields derm_jax.main accepts for a single run although configs/ does not define them.
EXTRA_FIELDS = {
  "smoke_steps": (0, "> 0: stop after this many steps (a first look, tests, CI); accepted by "
                  "derm_jax.main for every config"),
}


# ----------------------------------------------------------------------------- field paths


def field_paths(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted path, value) of every leaf field of `config`; an empty ConfigDict is a leaf."""
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ConfigDict, dict)) and len(value):
      yield from field_paths(value, path + ".")
    else:
      yield path, value


def nearest_fields(config: Any, path: str, n: int = 5) -> list[str]:
  """Existing field paths nearest to `path` (an unknown one): those with the same last
  name (`num_epochs` -> classifier.num_epochs, vae.num_epochs, ...), then the closest by
  spelling of the whole path and of the last name."""
  paths = [p for p, _ in field_paths(config)]
  nodes = sorted({p.rsplit(".", 1)[0] for p in paths if "." in p})
  paths += [f"{n_}." for n_ in nodes]  # a section, for a path that stops too soon
  last = path.rsplit(".", 1)[-1]
  same = [p for p in paths if p.rsplit(".", 1)[-1] == last]
  close = difflib.get_close_matches(path, paths, n=n, cutoff=0.6)
  lasts: dict[str, list[str]] = {}
  for p in paths:
    lasts.setdefault(p.rsplit(".", 1)[-1], []).append(p)
  near_last = [p for name in difflib.get_close_matches(last, list(lasts), n=n, cutoff=0.75)
               for p in lasts[name]]
  out: list[str] = []
  for p in (*same, *close, *near_last):
    p = p.rstrip(".")
    if p and p != path and p not in out:
      out.append(p)
  return out[:n]


# ----------------------------------------------------------------------------- comments


class _Comments:
  """Per line of one source file: its comment, the comment's column, and whether the line
  holds nothing but the comment."""

  def __init__(self, source: str):
    self.text: dict[int, str] = {}
    self.col: dict[int, int] = {}
    self.alone: dict[int, bool] = {}
    self.lines = source.splitlines()
    try:
      for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
          row, col = tok.start
          self.text[row] = tok.string.lstrip("#").strip()
          self.col[row] = col
          self.alone[row] = not self.lines[row - 1][:col].strip()
    except (tokenize.TokenError, SyntaxError):
      pass

  def above(self, stmt: ast.stmt) -> list[str]:
    """The comment-only lines right above `stmt` at its own indentation."""
    out = []
    row = stmt.lineno - 1
    while row > 0 and self.alone.get(row) and self.col[row] == stmt.col_offset:
      out.append(self.text[row])
      row -= 1
    return out[::-1]

  def beside(self, stmt: ast.stmt) -> list[str]:
    """The comments on `stmt`'s own lines, then the comment-only lines below it indented
    deeper than it (a trailing comment continued)."""
    end = stmt.end_lineno or stmt.lineno
    out = [self.text[r] for r in range(stmt.lineno, end + 1) if r in self.text]
    row = end + 1
    while out and self.alone.get(row) and self.col[row] > stmt.col_offset:
      out.append(self.text[row])
      row += 1
    return out


def _attr_path(node: ast.expr) -> list[str] | None:
  """['c', 'vae', 'num_epochs'] of `c.vae.num_epochs` (attributes or string subscripts)."""
  parts = []
  while True:
    if isinstance(node, ast.Attribute):
      parts.append(node.attr)
      node = node.value
    elif (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
          and isinstance(node.slice.value, str)):
      parts.append(node.slice.value)
      node = node.value
    elif isinstance(node, ast.Name):
      parts.append(node.id)
      return parts[::-1]
    else:
      return None


class _Module:
  """One parsed source file: its functions, comments and the modules it names."""

  def __init__(self, path: str):
    self.path = path
    with open(path, encoding="utf-8") as f:
      source = f.read()
    self.tree = ast.parse(source)
    self.comments = _Comments(source)
    self.functions = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
    self.imports: dict[str, str] = {}  # local name -> module name
    for node in ast.walk(self.tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          self.imports[a.asname or a.name.split(".")[0]] = a.name
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        for a in node.names:
          self.imports[a.asname or a.name] = f"{node.module}.{a.name}"

  def module_file(self, name: str) -> str | None:
    """The source file of the module imported here as `name`: beside this file (configs/
    put their folder on sys.path), else where Python finds it."""
    module = self.imports.get(name)
    if module is None:
      return None
    beside = os.path.join(os.path.dirname(self.path), module.replace(".", os.sep) + ".py")
    if os.path.isfile(beside):
      return beside
    try:
      spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
      return None
    origin = spec.origin if spec else None
    return origin if origin and origin.endswith(".py") else None


class FieldNotes:
  """Comments (above, beside) and file order of each field path a config file sets."""

  def __init__(self):
    self.above: dict[str, list[str]] = {}
    self.beside: dict[str, list[str]] = {}
    self.order: dict[str, int] = {}
    self._modules: dict[str, _Module] = {}

  def _module(self, path: str) -> _Module | None:
    if path not in self._modules:
      try:
        self._modules[path] = _Module(path)
      except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    return self._modules[path]

  def read(self, file: str, function: str = "get_config", prefix: str = "",
           depth: int = 0) -> FieldNotes:
    module = self._module(file)
    fn = module.functions.get(function) if module else None
    if fn is None or depth > 8:
      return self
    returned = next((s.value.id for s in fn.body if isinstance(s, ast.Return)
                     and isinstance(s.value, ast.Name)), "c")
    for stmt in fn.body:  # top-level statements only (see the module docstring)
      if not isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        continue
      targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
      for target in targets:
        parts = _attr_path(target)
        if not parts or parts[0] != returned or len(parts) < 2:
          continue
        path = prefix + ".".join(parts[1:])
        self.order.setdefault(path, len(self.order))
        for store, notes in ((self.above, module.comments.above(stmt)),
                             (self.beside, module.comments.beside(stmt))):
          for note in notes:
            if note not in store.setdefault(path, []):
              store[path].append(note)
        call = stmt.value
        if isinstance(call, ast.Call):  # a part built by a function: its fields' comments
          if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
            other = module.module_file(call.func.value.id)
            if other:
              self.read(other, call.func.attr, path + ".", depth + 1)
          elif isinstance(call.func, ast.Name) and call.func.id in module.functions:
            self.read(file, call.func.id, path + ".", depth + 1)
    return self

  def rank(self, path: str) -> int:
    """File order of `path`, else of its nearest ancestor that the file sets."""
    while path:
      if path in self.order:
        return self.order[path]
      path = path.rpartition(".")[0]
    return len(self.order)


def _value(value: Any) -> str:
  if isinstance(value, (ConfigDict, dict)):
    return "{}"
  return repr(value)


def render(config: Any, config_arg: str | None, extra: bool = True) -> str:
  """The text `--print_config` prints: a header, then each field as `path = value` under
  its comments. `config_arg`: the --config value (`FILE[:preset]`), whose file's comments
  are used; `extra`: also list EXTRA_FIELDS the config lacks."""
  file = (config_arg or "").split(":", 1)[0]
  notes = FieldNotes().read(file) if file and os.path.isfile(file) else FieldNotes()
  fields = list(field_paths(config))
  if extra and config.get("task") != "compare":
    for name, (default, note) in EXTRA_FIELDS.items():
      if name not in config:
        fields.append((name, default))
        notes.beside.setdefault(name, [note])
        notes.order.setdefault(name, len(notes.order))
  fields.sort(key=lambda f: notes.rank(f[0]))
  out = [f"# {config_arg or 'config'}: every field (after the preset and the command line's "
         "overrides).",
         "# Set any of them with --config.<field>=<value>; the comments are the config file's.",
         ""]
  section = None
  for path, value in fields:
    above = notes.above.get(path, [])
    new_section = path.split(".", 1)[0] if "." in path else None
    if (above or new_section != section) and out[-1]:
      out.append("")
    section = new_section
    if above:
      out.extend(f"# {line}" if line else "#" for line in above)
    line = f"{path} = {_value(value)}"
    beside = notes.beside.get(path, [])
    if beside:
      line += f"  # {beside[0]}"
      out.append(line)
      pad = " " * (line.index("  # ") + 2)
      out.extend(f"{pad}# {more}" for more in beside[1:])
    else:
      out.append(line)
  return "\n".join(out).rstrip() + "\n"
