"""Which notebook globals a sweep cell needs, and how they travel to Ray workers.

The cell's names are found with the AST (plus, transitively, the globals that notebook-defined
functions use); modules travel by name and are imported again in the worker; everything else
goes into one object shipped once per sweep through the Ray object store.
"""

from __future__ import annotations

import ast
import sys
import types
from dataclasses import dataclass, field

from .space import SweepError

FILENAME = "<sweep cell>"


@dataclass
class Shipment:
    values: dict = field(default_factory=dict)   # name -> value (pickled once, into the object store)
    modules: dict = field(default_factory=dict)  # name -> module name, imported again in the worker
    submodules: list = field(default_factory=list)  # dotted modules the cell reaches through attributes
    skipped: dict = field(default_factory=dict)  # name -> why it could not travel (named if the trial needs it)


def parse_body(body: str) -> ast.Module:
    try:
        return ast.parse(body, FILENAME)
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        raise SweepError(f"the sweep cell's body is not plain Python (line {exc.lineno}: {line!r}: {exc.msg}); "
                         "it runs in Ray workers, where IPython magics and !shell commands do not exist.", what="body",
                         line=exc.lineno) from None


def _positions(tree: ast.AST) -> tuple[dict, dict, set]:
    """First line each name is read and first line it is bound at (any depth), and dotted chains."""
    loads, stores, chains = {}, {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            table = loads if isinstance(node.ctx, ast.Load) else stores
            table[node.id] = min(table.get(node.id, node.lineno), node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                stores[bound] = min(stores.get(bound, node.lineno), node.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stores[node.name] = min(stores.get(node.name, node.lineno), node.lineno)
        elif isinstance(node, ast.Attribute):
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name):
                chains.add(".".join([node.id, *reversed(parts)]))
    return loads, stores, chains


def assigns(tree: ast.Module, name: str) -> bool:
    """Whether the cell binds ``name`` somewhere (the --metric check before any trial runs)."""
    return name in _positions(tree)[1]


def free_names(tree: ast.Module) -> set[str]:
    """Names the cell reads before (or without) binding them itself: they come from the notebook."""
    loads, stores, _ = _positions(tree)
    return {n for n, line in loads.items() if n not in stores or line <= stores[n]}


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _notebook_defined(value) -> bool:
    return getattr(value, "__module__", None) == "__main__" and isinstance(value, (types.FunctionType, type))


def collect(tree: ast.Module, user_ns: dict, hidden: dict, exclude: set) -> Shipment:
    """The globals the cell needs from ``user_ns``, minus IPython's own (``hidden``) and ``exclude``
    (the sampled parameters). Notebook functions bring the globals they use along."""
    out = Shipment()
    wanted, seen = free_names(tree), set()
    while wanted:
        name = wanted.pop()
        if name in seen or name in exclude or name not in user_ns or name.startswith("__"):
            continue
        seen.add(name)
        value = user_ns[name]
        if name in hidden and hidden[name] is value:
            continue  # In, Out, get_ipython, exit ...: the notebook's machinery, not the cell's inputs
        if isinstance(value, types.ModuleType):
            out.modules[name] = value.__name__
            continue
        out.values[name] = value
        if _notebook_defined(value):
            codes = [value.__code__] if isinstance(value, types.FunctionType) else \
                [f.__code__ for f in vars(value).values() if isinstance(f, types.FunctionType)]
            for code in codes:
                wanted |= _code_names(code) - seen
    chains = _positions(tree)[2]
    for chain in chains:
        root, *rest = chain.split(".")
        if root in out.modules:  # np.linalg.norm: import numpy.linalg too, if this kernel has it
            parts = [out.modules[root], *rest]
            for i in range(len(parts), 1, -1):
                dotted = ".".join(parts[:i])
                if dotted in sys.modules:
                    out.submodules.append(dotted)
                    break
    return out


def pickle_problems(values: dict) -> dict:
    """name -> reason, for the values that cannot be pickled (only looked for when the whole put failed)."""
    from ray import cloudpickle

    problems = {}
    for name, value in values.items():
        try:
            cloudpickle.dumps(value)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means: cannot travel
            problems[name] = f"{type(exc).__name__}: {exc}"
    return problems


def rebind(values: dict, ns: dict) -> None:
    """Notebook-defined functions read their globals from the trial's namespace, as they would from
    the notebook's: a function that reads ``lr`` sees the sampled value."""
    for name, value in list(values.items()):
        if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
            fn = types.FunctionType(value.__code__, ns, value.__name__, value.__defaults__, value.__closure__)
            fn.__kwdefaults__, fn.__qualname__, fn.__doc__ = value.__kwdefaults__, value.__qualname__, value.__doc__
            fn.__dict__.update(value.__dict__)
            ns[name] = fn
