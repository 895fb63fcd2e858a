"""Variable hand-off between steps, by static analysis (AST) of each step's code.

For each step: the names it *needs* (read before this step binds them) and the names it
*produces* (binds, or mutates in place: item/attribute assignment, augmented assignment,
calls such as ``fit``/``append``/``update`` or ``inplace=True``). A name a step needs comes from
the latest earlier step that produces it, preferring the step's ancestors; a producer that is
not yet an ancestor becomes one (data dependencies add ordering).

Files work the same way: the paths a step names as literals (``pd.read_csv("data/train.csv")``,
``Path("data") / "train.csv"``, a string parameter) that exist in the project or are DVC-tracked, and its
``deps:PATH`` tags, are its data inputs; a path it writes (``to_csv``, ``open(p, "w")``, ``joblib.dump``...:
``WRITERS``) is its output, not an input. A file an earlier step writes is an input of the steps that name it,
and orders them after the writer.
"""

from __future__ import annotations

import ast
import builtins
import os
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


def metric_names(cells, warnings: list | None = None) -> list:
    """Names a metrics cell reports: names it assigns, bare names / tuples of names, and the names it
    prints (Kale's ``print(precision)``). A metrics cell that names nothing adds a line to ``warnings``."""
    names = []
    for cell in cells:
        tree = ast.parse(python_source(cell.source))
        mine = []
        for stmt in tree.body:
            found = []
            if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
                    found += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
            elif isinstance(stmt, ast.Expr):
                v = stmt.value
                if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "print":
                    values = v.args
                else:
                    values = v.elts if isinstance(v, (ast.Tuple, ast.List)) else [v]
                found += [e.id for e in values if isinstance(e, ast.Name)]
            mine += [n for n in found if n not in mine]
        if not mine and warnings is not None:
            warnings.append(f"the metrics {cell.where} names no variable to report, so the pipeline records no "
                            "metric from it; write the names, e.g. `accuracy, f1` or `print(accuracy)`.")
        names += [n for n in mine if n not in names]
    return names


# call name -> which argument is the path it writes: an index (or a keyword in PATH_KEYWORDS), "self" (the
# path the method is called on: Path(p).write_text(...)), or None: any literal path among its arguments
# (np.save(p, a), joblib.dump(x, p), torch.save(x, p), model.save(p)). ``open`` goes by its mode.
WRITERS = {**dict.fromkeys(("to_csv", "to_parquet", "to_json", "to_excel", "to_pickle", "to_feather", "to_hdf",
                            "to_stata", "to_orc", "to_xml", "to_html", "to_netcdf", "to_zarr", "savefig", "savetxt",
                            "savez", "savez_compressed", "imwrite", "write_parquet", "write_csv"), 0),
           **dict.fromkeys(("save", "dump", "save_model", "export_model"), None),
           **dict.fromkeys(("write_text", "write_bytes", "touch"), "self"),
           **dict.fromkeys(("copy", "copyfile", "copy2", "copytree", "move"), 1)}
PATH_KEYWORDS = {"path", "path_or_buf", "fname", "file", "filename", "f", "excel_writer", "dst", "uri"}
_PATH_CALLS = {"join", "Path", "PurePath", "PosixPath"}  # os.path.join(...) / Path(...) of literal parts


def literal_path(node, known: dict | None = None) -> str | None:
    """The path an expression names when it is made of literals only: "a.csv", f"a.csv", os.path.join("d",
    "a.csv"), Path("d") / "a.csv"; a name bound to such a path in ``known``; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return (known or {}).get(node.id)
    if isinstance(node, ast.JoinedStr) and all(isinstance(v, ast.Constant) for v in node.values):
        return "".join(str(v.value) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        parts = [literal_path(node.left, known), literal_path(node.right, known)]
    elif isinstance(node, ast.Call) and _call_name(node) in _PATH_CALLS and node.args and not node.keywords:
        parts = [literal_path(a, known) for a in node.args]
    else:
        return None
    return os.path.join(*parts) if all(isinstance(p, str) and p for p in parts) else None


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def written(node: ast.Call) -> list:
    """The expressions naming the files a call writes (see WRITERS); [] for a call that writes none."""
    name = _call_name(node)
    if name == "open":
        receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
        on_path = receiver is not None and literal_path(receiver) is not None  # Path(p).open("w")
        args = [receiver, *node.args] if on_path else list(node.args)
        mode = args[1] if len(args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
        text = mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "r"
        return args[:1] if set(text) & set("wax+") else []
    if name not in WRITERS:
        return []
    where = WRITERS[name]
    if where == "self":
        return [node.func.value] if isinstance(node.func, ast.Attribute) else []
    keywords = [k.value for k in node.keywords if k.arg in PATH_KEYWORDS]
    if where is None:
        return list(node.args) + keywords
    return ([node.args[where]] if len(node.args) > where else []) + keywords


@dataclass
class Files:
    """What a piece of code names as paths: ``reads`` every literal path in it, ``writes`` the literal paths
    it writes, ``write_names`` the names it writes to (a parameter holding a path)."""
    reads: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    write_names: set = field(default_factory=set)

    def add(self, other: "Files") -> None:
        self.reads += [p for p in other.reads if p not in self.reads]
        self.writes += [p for p in other.writes if p not in self.writes]
        self.write_names |= other.write_names


def files(trees, known: dict) -> Files:
    """The paths named in ``trees`` (ast nodes), with ``known`` names bound to literal paths (parameters);
    a top-level ``name = <literal path>`` binds ``name`` for the code after it."""
    out, known = Files(), dict(known)
    for tree in trees:
        for stmt in getattr(tree, "body", [tree]):
            for node in ast.walk(stmt):
                path = literal_path(node, known) if not isinstance(node, ast.Name) else None
                if path and path not in out.reads:
                    out.reads.append(path)
                if isinstance(node, ast.Call):
                    for target in written(node):
                        path = literal_path(target, known)
                        if path and path not in out.writes:
                            out.writes.append(path)
                        if isinstance(target, ast.Name):
                            out.write_names.add(target.id)
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                path = literal_path(stmt.value, known)
                if path:
                    known[stmt.targets[0].id] = path
    return out


def _trees(cells) -> list:
    return [ast.parse(python_source(c.source)) for c in cells]


def function_files(cells, known: dict) -> dict:
    """{function name: Files} for the top-level functions of the ``functions`` cells."""
    return {node.name: files([node], known) for tree in _trees(cells) for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


IGNORED_DIRS = {".git", ".dvc", ".mlops", ".ipynb_checkpoints", "__pycache__"}


def dvc_tracked(path: Path, project: Path) -> Path | None:
    """The DVC-tracked file or folder that holds ``path`` (a ``.dvc`` file beside it or beside a folder
    above it, up to ``project``), or None."""
    for p in (path, *path.parents):
        if p == project or project not in p.parents:
            return None
        if p.with_name(p.name + ".dvc").is_file():
            return p
    return None


class Places:
    """Resolves the paths code names, relative to the notebook's folder (the steps' working directory)."""

    def __init__(self, root: Path, exclude: Path | None = None):
        from .. import config

        self.root, self.project, self.exclude = root, config.find_project_root(root), exclude

    def rel(self, text: str) -> str | None:
        """``text`` as a normalised path relative to the notebook's folder, if it names a place inside the
        project (not the project itself, the pipeline folder or tool folders such as .git); else None."""
        if not text or "\n" in text or len(text) > 1024:
            return None
        full = Path(os.path.normpath(self.root / os.path.expanduser(text)))
        if full == self.project or self.project not in full.parents:
            return None
        if self.exclude is not None and (full == self.exclude or self.exclude in full.parents):
            return None
        if IGNORED_DIRS & set(full.relative_to(self.project).parts):
            return None
        return Path(os.path.relpath(full, self.root)).as_posix()

    def data(self, rel: str) -> bool:
        """Whether a named path is data a step reads: an existing file, or a DVC-tracked file or folder."""
        return (self.root / rel).is_file() or self.tracked(rel)

    def tracked(self, rel: str) -> bool:
        return dvc_tracked(Path(os.path.normpath(self.root / rel)), self.project) is not None


def _inside(path: str, folders) -> bool:
    return any(path != f and (path + "/").startswith(f.rstrip("/") + "/") for f in folders)


@dataclass
class Flow:
    deps: dict          # step -> [steps] (explicit order + data dependencies), topological
    inputs: dict        # step -> {name: producer step}
    outputs: dict       # step -> [names] its descendants load from it
    params: dict        # step -> [param names] it reads
    modules: dict       # step -> [local module files, relative to the notebook folder]
    metrics: dict       # step -> [metric names]
    data: dict = field(default_factory=dict)         # step -> [files / folders it reads, relative to the notebook]
    data_params: dict = field(default_factory=dict)  # step -> [params whose value is a path it reads]
    writes: dict = field(default_factory=dict)       # step -> [files it writes, relative to the notebook]
    warnings: list = field(default_factory=list)     # what export should tell (a metrics cell naming nothing...)


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


def flow(parsed: Parsed, root: Path, exclude: Path | None = None) -> Flow:
    """The data flow between ``parsed``'s steps, with ``root`` the notebook's folder; paths inside ``exclude``
    (the pipeline folder) are never data inputs."""
    shared = usage(parsed.imports + parsed.functions)
    given = set(parsed.params) | shared.produces | BUILTINS
    names = [s.name for s in parsed.steps]
    deps = {n: list(parsed.deps[n]) for n in names}
    ancestors: dict[str, set] = {}
    fl = Flow(deps, {}, {n: [] for n in names}, {}, {}, {}, warnings=list(parsed.warnings))
    places = Places(root, exclude)
    path_params = {k: v for k, v in parsed.params.items() if isinstance(v, str)}
    helpers = function_files(parsed.functions, path_params)
    uses = {s.name: usage(s.cells) for s in parsed.steps}
    code = {s.name: files(_trees(s.cells), path_params) for s in parsed.steps}
    for step in parsed.steps:
        for helper in uses[step.name].needs:
            if helper in helpers:
                code[step.name].add(helpers[helper])
    writers: dict[str, list] = {}  # path -> the steps writing it, in run order
    for n in names:
        for path in filter(None, map(places.rel, code[n].writes)):
            writers.setdefault(path, []).append(n)
    produced: list[tuple[str, set]] = []  # (step, names), in run order
    for step in parsed.steps:
        u = uses[step.name]
        anc = set()
        for d in deps[step.name]:
            anc |= {d} | ancestors[d]
        fl.inputs[step.name] = {}
        wanted = [(n, [s for s, made in produced if n in made]) for n in u.needs if n not in given]
        wanted = [(n, makers) for n, makers in wanted if makers]  # else: builtin, star import or a NameError
        mine = code[step.name]
        writes = [p for p in map(places.rel, mine.writes) if p]
        reads = _data(step, mine, places, writes, writers, fl.warnings)
        for path in reads:  # a file an earlier step writes: read after that step has written it
            makers = [w for w in writers.get(path, []) if w != step.name]
            if makers and not anc & set(makers):
                deps[step.name].append(makers[-1])
                anc |= {makers[-1]} | ancestors[makers[-1]]
        for name, makers in wanted:  # first the data dependencies: a producer outside the ancestors joins them
            if not anc & set(makers):
                deps[step.name].append(makers[-1])
                anc |= {makers[-1]} | ancestors[makers[-1]]
        for name, makers in wanted:  # then each name from the latest ancestor that produces it
            src = [s for s in makers if s in anc][-1]
            fl.inputs[step.name][name] = src
            if name not in fl.outputs[src]:
                fl.outputs[src].append(name)
        ancestors[step.name] = anc
        produced.append((step.name, u.produces))
        fl.params[step.name] = sorted({n for n in u.needs + shared.needs if n in parsed.params})
        # a module imported in the shared imports cell counts for the steps that use what it binds
        used = {mod for nm, mod in shared.bindings.items() if nm in u.needs or nm in shared.needs}
        fl.modules[step.name] = local_modules(u.modules | used, root)
        fl.metrics[step.name] = metric_names([c for c in step.cells if c.kind == "metrics"], fl.warnings)
        fl.data[step.name], fl.writes[step.name] = reads, writes
        # a string parameter naming data is read from wherever its value (perhaps overridden) points
        fl.data_params[step.name] = [k for k in fl.params[step.name] if k in path_params and k not in mine.write_names
                                     and places.rel(path_params[k]) and places.data(places.rel(path_params[k]))]
    return fl


def _data(step, code: Files, places: Places, writes: list, writers: dict, warnings: list) -> list:
    """The files and folders ``step`` reads: named paths that hold data or that another step writes, and its
    deps: tags; never what the step writes itself, nor a file inside a folder already listed."""
    found = []
    for text in code.reads:
        path = places.rel(text)
        if path and path not in writes and (places.data(path) or path in writers):
            found.append(path)
    for text, cell in step.reads.items():
        path = places.rel(text) or Path(os.path.normpath(places.root / text)).as_posix()
        if not (places.root / path).exists() and path not in writers and not places.tracked(path):
            warnings.append(f"{cell.where} has the tag deps:{text}, but {path} does not exist and no step "
                            "writes it; check the path (relative to the notebook's folder).")
        found.append(path)
    found = list(dict.fromkeys(found))
    return [p for p in found if not _inside(p, found)]
