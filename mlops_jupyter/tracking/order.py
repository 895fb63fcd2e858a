"""Hidden state: the execution order behind a tracked cell, and the cells it depends on that changed since
they ran or sit below it in the notebook (run out of order).

The kernel notes every cell it executes (count, cell id, source hash: a few microseconds); a tracked cell
records that order. Which earlier cell a tracked cell depends on is read from the names it uses and the
names each earlier cell binds (AST, cached per source), off the cell's path.

Stdlib only: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
from dataclasses import dataclass

KEEP = 200  # executions a run records: a long session keeps its latest ones
BUILTINS = set(dir(builtins)) | {"In", "Out", "get_ipython", "exit", "quit", "display"}


@dataclass(frozen=True)
class Executed:
    count: int | None
    cell_id: str | None
    source: str
    hash: str


def source_hash(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()[:12]


class History:
    def __init__(self):
        self.cells: list[Executed] = []
        self._encoded: list[str] = []  # each execution as JSON, made once: a run records the latest KEEP
        self._names: dict[str, tuple[set, set]] = {}  # source hash -> (names bound, names used)

    def note(self, count: int | None, cell_id: str | None, source: str) -> None:
        cell = Executed(count, cell_id, source, source_hash(source))
        self.cells.append(cell)
        self._encoded.append(json.dumps({"count": count, "cell_id": cell_id, "hash": cell.hash}))
        if len(self.cells) > 2 * KEEP:
            del self.cells[:-KEEP], self._encoded[:-KEEP]

    def order(self) -> list[dict]:
        """The executions so far, oldest first (the tracked cell's own last): what its run records."""
        return json.loads(self.order_json())

    def order_json(self) -> str:
        """``order()`` as JSON text, without encoding the executions again (microseconds for KEEP of them)."""
        return "[" + ",".join(self._encoded[-KEEP:]) + "]"

    def names(self, cell: Executed, to_python) -> tuple[set, set]:
        if cell.hash not in self._names:
            self._names[cell.hash] = _names(cell.source, to_python)
        return self._names[cell.hash]

    def dependencies(self, cells: list[Executed], to_python) -> list[Executed]:
        """The earlier executions the last of ``cells`` (the tracked cell) reads a name from: for each name it
        uses and does not bind first, the latest earlier cell that bound it."""
        if not cells:
            return []
        *before, current = cells
        _, used = self.names(current, to_python)
        found: dict[int, Executed] = {}
        for name in used:
            for i in range(len(before) - 1, -1, -1):
                if name in self.names(before[i], to_python)[0]:
                    found[i] = before[i]
                    break
        return [found[i] for i in sorted(found)]


def _names(source: str, to_python) -> tuple[set, set]:
    """(names the cell binds anywhere, names it reads before binding them at its top level)."""
    if source.lstrip().startswith("%%mlops"):  # %%mlops run / sweep: the body is the cell's code
        source = source.lstrip().partition("\n")[2]
    try:
        tree = ast.parse(to_python(source))
    except (SyntaxError, ValueError):
        return set(), set()
    bound, used = set(), set()
    for node in tree.body:
        reads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        used |= reads - bound - BUILTINS
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                bound.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return bound, used


def warnings(deps: list[Executed], current: Executed, saved: dict) -> list[str]:
    """What the summary line says about hidden state. ``saved``: the saved notebook's code cells,
    {cell id: (position, source)} (empty when the kernel does not know its notebook)."""
    changed = [d for d in deps if d.cell_id in saved and source_hash(saved[d.cell_id][1]) != d.hash]
    here = saved.get(current.cell_id, (None,))[0]
    below = [d for d in deps if here is not None and d.cell_id in saved and saved[d.cell_id][0] > here]
    out = []
    if changed:
        out.append(f"depends on a cell changed since it ran: {_counts(changed)}")
    if below:
        out.append(f"depends on a cell below it, run out of order: {_counts(below)}")
    return out


def _counts(cells: list[Executed]) -> str:
    return ", ".join(f"[{c.count}]" if c.count is not None else "[?]" for c in cells)
