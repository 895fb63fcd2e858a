"""Variable hand-off between steps, by static analysis (AST) of each step's code.

For each step: the names it *needs* (read before this step binds them) and the names it
*produces* (binds, or mutates in place: item/attribute assignment, augmented assignment,
calls such as ``fit``/``append``/``update`` or ``inplace=True``). A name a step needs comes from
the latest earlier step that produces it, preferring the step's ancestors; a producer that is
not yet an ancestor becomes one (data dependencies add ordering).
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field
from pathlib import Path

from .tags import Parsed, PipelineError

MUTATORS = {"fit", "fit_transform", "partial_fit", "append", "extend", "insert", "update", "pop", "popitem",
            "remove", "clear", "add", "discard", "setdefault", "sort", "reverse", "set_params", "train", "compile",
            "load_state_dict", "step", "zero_grad", "to", "setflags", "resize", "fill", "put", "rename_axis",
            "set_index", "reset_index", "drop", "fillna", "dropna", "replace", "rename", "sort_values",
            "sort_index", "where", "mask", "clip", "interpolate", "ffill", "bfill"}
PYTHON_CELL_MAGICS = {"mlops", "time", "timeit", "capture", "prun"}
_MAGIC = re.compile(r"^(\s*)([%!].*)$")
BUILTINS = set(dir(builtins))


@dataclass
class Usage:
    needs: list = field(default_factory=list)      # names read before bound, first use order
    produces: set = field(default_factory=set)     # names bound or mutated
    modules: set = field(default_factory=set)      # top-level module names imported
    bindings: dict = field(default_factory=dict)   # name an import binds -> top-level module


def python_source(source: str) -> str:
    """Cell source with IPython magics and shell escapes blanked, so ast can read the rest."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        # cell magics whose body is this kernel's Python (``%%mlops run``, ``%%time``...) keep their body
        if lines[0].lstrip()[2:].split(" ")[0] not in PYTHON_CELL_MAGICS:
            return ""
        lines = ["pass", *lines[1:]]
    return "\n".join(_MAGIC.sub(r"\1pass", ln) for ln in lines)


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


class _Walker(ast.NodeVisitor):
    """Statement by statement: loads not yet bound go to ``needs``; stores to ``produces``."""

    def __init__(self, usage: Usage):
        self.u, self.bound, self._depth = usage, set(), 0

    def need(self, name):
        if name not in self.bound and name not in self.u.needs:
            self.u.needs.append(name)

    def bind(self, name):
        if self._depth == 0:
            self.bound.add(name)
            self.u.produces.add(name)

    def mutate(self, name):
        if name and self._depth == 0:
            self.need(name)
            self.u.produces.add(name)
            self.bound.add(name)

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self.need(node.id)
        elif self._depth == 0:
            self.bind(node.id)

    def visit_Assign(self, node):
        self.visit(node.value)
        for t in node.targets:
            self._target(t)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)
        self._target(node.target)

    def visit_AugAssign(self, node):
        self.visit(node.value)
        name = _root(node.target)
        self.mutate(name)
        if not isinstance(node.target, ast.Name):
            self.visit(node.target)

    def _target(self, t):
        if isinstance(t, ast.Name):
            self.bind(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                self._target(e)
        elif isinstance(t, ast.Starred):
            self._target(t.value)
        else:  # x[i] = ..., x.attr = ...
            self.visit(t)
            self.mutate(_root(t))

    def visit_Delete(self, node):
        for t in node.targets:
            if isinstance(t, ast.Name):
                self.bound.discard(t.id)
                self.u.produces.discard(t.id)
            else:
                self.visit(t)
                self.mutate(_root(t))

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and (
                node.func.attr in MUTATORS or any(k.arg == "inplace" for k in node.keywords)):
            self.mutate(_root(node.func.value))

    def visit_Import(self, node):
        for a in node.names:
            self.u.modules.add(a.name.split(".")[0])
            self.u.bindings[a.asname or a.name.split(".")[0]] = a.name.split(".")[0]
            self.bind(a.asname or a.name.split(".")[0])

    def visit_ImportFrom(self, node):
        if node.level == 0 and node.module:
            self.u.modules.add(node.module.split(".")[0])
        for a in node.names:
            if a.name != "*":
                if node.level == 0 and node.module:
                    self.u.bindings[a.asname or a.name] = node.module.split(".")[0]
                self.bind(a.asname or a.name)

    def _scope(self, node, args=None):
        # names read inside a function/lambda/comprehension count as needs (conservative); its own
        # parameters and locals do not leak out
        saved = set(self.bound)
        if args is not None:
            for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if a is not None:
                    self.bound.add(a.arg)
        self._depth += 1
        inner = _Walker(self.u)
        inner.bound, inner._depth = self.bound, self._depth
        for child in (node.body if isinstance(node.body, list) else [node.body]):
            _locals(child, self.bound)
            inner.visit(child)
        self._depth -= 1
        self.bound = saved

    def visit_FunctionDef(self, node):
        for d in node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]:
            self.visit(d)
        self.bind(node.name)
        self._scope(node, node.args)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        for d in node.args.defaults:
            self.visit(d)
        self._scope(node, node.args)

    def visit_ClassDef(self, node):
        for b in node.bases + node.decorator_list:
            self.visit(b)
        self.bind(node.name)
        self._scope(node)

    def _comp(self, node, elts):
        saved = set(self.bound)
        self._depth += 1
        for gen in node.generators:
            self.visit(gen.iter)
            for n in ast.walk(gen.target):
                if isinstance(n, ast.Name):
                    self.bound.add(n.id)
            for cond in gen.ifs:
                self.visit(cond)
        for e in elts:
            self.visit(e)
        self._depth -= 1
        self.bound = saved

    def visit_ListComp(self, node):
        self._comp(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node):
        self._comp(node, [node.key, node.value])

    def visit_For(self, node):
        self.visit(node.iter)
        self._target(node.target)
        for s in node.body + node.orelse:
            self.visit(s)

    def visit_With(self, node):
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        for s in node.body:
            self.visit(s)

    def visit_ExceptHandler(self, node):
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bound.add(node.name)
        for s in node.body:
            self.visit(s)

    def visit_NamedExpr(self, node):
        self.visit(node.value)
        self._target(node.target)


def _locals(node, bound: set):
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            bound.add(n.id)


def usage(cells) -> Usage:
    """Needs / produces / imported modules of a sequence of cells run in order."""
    u = Usage()
    w = _Walker(u)
    for cell in cells:
        try:
            tree = ast.parse(python_source(cell.source))
        except SyntaxError as exc:
            raise PipelineError(f"{cell.where} is not valid Python ({exc.msg}, line {exc.lineno}); fix it or tag "
                                "it skip.", **getattr(cell, "at", {})) from None
        for stmt in tree.body:
            w.visit(stmt)
    return u


def metric_names(cells) -> list:
    """Names a metrics cell reports: names it assigns, and bare names / tuples of names (Kale's style)."""
    names = []
    for cell in cells:
        tree = ast.parse(python_source(cell.source))
        for stmt in tree.body:
            found = []
            if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
                    found += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
            elif isinstance(stmt, ast.Expr):
                v = stmt.value
                found += [e.id for e in (v.elts if isinstance(v, (ast.Tuple, ast.List)) else [v])
                          if isinstance(e, ast.Name)]
            names += [n for n in found if n not in names]
    return names


@dataclass
class Flow:
    deps: dict          # step -> [steps] (explicit order + data dependencies), topological
    inputs: dict        # step -> {name: producer step}
    outputs: dict       # step -> [names] its descendants load from it
    params: dict        # step -> [param names] it reads
    modules: dict       # step -> [local module files, relative to the notebook folder]
    metrics: dict       # step -> [metric names]


def local_modules(names: set, root: Path) -> list:
    """Files of the modules in ``names`` that live beside the notebook (and what they import, in turn)."""
    found, todo, seen = [], list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        files = []
        if (root / f"{name}.py").is_file():
            files = [root / f"{name}.py"]
        elif (root / name / "__init__.py").is_file():
            files = sorted((root / name).rglob("*.py"))
        for f in files:
            rel = f.relative_to(root).as_posix()
            if rel not in found:
                found.append(rel)
            try:
                more = usage([_FileCell(f)]).modules
            except PipelineError:
                more = set()
            todo.extend(more - seen)
    return sorted(found)


class _FileCell:
    def __init__(self, path: Path):
        self.source, self.where = path.read_text(errors="replace"), str(path)


def flow(parsed: Parsed, root: Path) -> Flow:
    """The data flow between ``parsed``'s steps, with ``root`` the notebook's folder."""
    shared = usage(parsed.imports + parsed.functions)
    given = set(parsed.params) | shared.produces | BUILTINS
    names = [s.name for s in parsed.steps]
    deps = {n: list(parsed.deps[n]) for n in names}
    ancestors: dict[str, set] = {}
    inputs, outputs, params, modules, metrics = {}, {n: [] for n in names}, {}, {}, {}
    produced: list[tuple[str, set]] = []  # (step, names), in run order
    for step in parsed.steps:
        u = usage(step.cells)
        anc = set()
        for d in deps[step.name]:
            anc |= {d} | ancestors[d]
        inputs[step.name] = {}
        wanted = [(n, [s for s, made in produced if n in made]) for n in u.needs if n not in given]
        wanted = [(n, makers) for n, makers in wanted if makers]  # else: builtin, star import or a NameError
        for name, makers in wanted:  # first the data dependencies: a producer outside the ancestors joins them
            if not anc & set(makers):
                deps[step.name].append(makers[-1])
                anc |= {makers[-1]} | ancestors[makers[-1]]
        for name, makers in wanted:  # then each name from the latest ancestor that produces it
            src = [s for s in makers if s in anc][-1]
            inputs[step.name][name] = src
            if name not in outputs[src]:
                outputs[src].append(name)
        ancestors[step.name] = anc
        produced.append((step.name, u.produces))
        params[step.name] = sorted({n for n in u.needs + shared.needs if n in parsed.params})
        # a module imported in the shared imports cell counts for the steps that use what it binds
        used = {mod for nm, mod in shared.bindings.items() if nm in u.needs or nm in shared.needs}
        modules[step.name] = local_modules(u.modules | used, root)
        metrics[step.name] = metric_names([c for c in step.cells if c.kind == "metrics"])
    return Flow(deps, inputs, outputs, params, modules, metrics)
