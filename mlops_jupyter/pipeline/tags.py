"""Cell tags -> steps: which cells form which step, the step order, the parameters.

Tags (Kale's names accepted as aliases): ``parameters`` | ``pipeline-parameters``,
``step:NAME`` | ``block:NAME``, ``after:NAME`` | ``prev:NAME``, ``imports``, ``functions``,
``metrics`` | ``pipeline-metrics``, ``model:NAME``, ``skip``. An untagged cell joins the step above
it; a notebook without step tags is one step named ``main``; a step without ``after:`` follows
the step before it.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass, field

from ..errors import PipelineError

ALIASES = {"pipeline-parameters": "parameters", "pipeline-metrics": "metrics", "block": "step", "prev": "after"}
PLAIN = ("parameters", "imports", "functions", "metrics", "skip")
NAMED = ("step", "after", "model")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass
class Cell:
    index: int          # position in the original notebook
    source: str
    kind: str = "code"  # code | imports | functions | parameters | metrics
    id: str | None = None  # the notebook's own cell id (nbformat 4.5), when it has one

    @property
    def at(self) -> dict:
        """The error fields that point at this cell."""
        return {"cell_index": self.index, "cell_id": self.id}

    @property
    def where(self) -> str:
        first = next((ln.strip() for ln in self.source.splitlines() if ln.strip()), "")
        return f"cell {self.index} ({first[:60]!r})"


@dataclass
class Step:
    name: str
    cells: list = field(default_factory=list)      # Cell, in notebook order (metrics cells included)
    after: list = field(default_factory=list)      # explicit after:/prev: names
    after_cells: dict = field(default_factory=dict)  # after-name -> Cell that named it
    models: list = field(default_factory=list)     # model:NAME tags seen on its cells
    model_cells: dict = field(default_factory=dict)  # model name -> Cell that tagged it
    first: Cell | None = None


@dataclass
class Parsed:
    steps: list            # Step, in topological order (notebook order where free)
    deps: dict             # step -> [step] it runs after (explicit / implicit order only)
    imports: list          # Cell
    functions: list        # Cell
    parameters: list       # Cell
    params: dict           # name -> literal value, in cell order
    kernel: str
    language: str


def cell_tags(cell) -> list[tuple[str, str | None]]:
    """(tag, argument) pairs of a cell with aliases resolved; unknown tags are kept as they are
    (Jupyter and other tools use tags of their own) but never affect the pipeline."""
    out = []
    for raw in cell.get("metadata", {}).get("tags", []) or []:
        raw = str(raw).strip()
        name, sep, arg = raw.partition(":")
        name = ALIASES.get(name, name)
        if sep and name in NAMED:
            out.append((name, arg.strip()))
        elif not sep and name in PLAIN:
            out.append((name, None))
    return out


def parse(nb) -> Parsed:
    """Split an nbformat notebook into steps; raises PipelineError naming the cell at fault."""
    steps: dict[str, Step] = {}
    order: list[str] = []
    imports, functions, parameters = [], [], []
    current: Step | None = None
    orphans: list[Cell] = []  # untagged code before the first step tag
    model_cells: dict[str, Cell] = {}
    models: list = []  # (step or None for code above the first step tag, model name)
    for index, nbcell in enumerate(nb.cells):
        if nbcell.get("cell_type") != "code":
            continue
        tags = cell_tags(nbcell)
        kinds = {t for t, _ in tags}
        cell = Cell(index, nbcell.get("source", ""), id=nbcell.get("id"))
        if "skip" in kinds:
            continue
        for tag, arg in tags:
            if tag == "model" and (not (arg or "").isidentifier() or keyword.iskeyword(arg)):
                raise PipelineError(f"{cell.where} has the tag model:{arg!r}; model:NAME names the variable that "
                                    "holds the fitted model when its step ends, e.g. model:clf for `clf = "
                                    "LogisticRegression().fit(X, y)`.", **cell.at)
            if tag in NAMED and not _NAME.match(arg or ""):
                raise PipelineError(f"{cell.where} has the tag {tag}:{arg!r}; a step name is letters, digits, "
                                    f"'_' or '-', e.g. {tag}:train.", **cell.at)
        shared = next((k for k in ("parameters", "imports", "functions") if k in kinds), None)
        if shared:  # cells every step notebook gets, not part of any step
            model = next((arg for tag, arg in tags if tag == "model"), None)
            if model:
                raise PipelineError(f"{cell.where} is tagged {shared} and model:{model}; a {shared} cell runs in every "
                                    f"step, so tag model:{model} on the cell of the step that fits {model}.", **cell.at)
            cell.kind = shared
            {"parameters": parameters, "imports": imports, "functions": functions}[shared].append(cell)
            continue
        if "metrics" in kinds:
            cell.kind = "metrics"
        for tag, arg in tags:
            if tag == "step":
                if arg not in steps:
                    steps[arg] = Step(arg, first=cell)
                    order.append(arg)
                current = steps[arg]
        target = current
        if target is None:
            orphans.append(cell)
        else:
            target.cells.append(cell)
            for tag, arg in tags:
                if tag == "after" and arg not in target.after:
                    target.after.append(arg)
                    target.after_cells[arg] = cell
        for tag, arg in tags:
            if tag == "model":
                if arg in model_cells:
                    raise PipelineError(f"{cell.where} has the tag model:{arg}, and so has {model_cells[arg].where}; "
                                        f"each model gets one serving package (serving/{arg}): tag one cell.",
                                        **cell.at)
                model_cells[arg] = cell
                models.append((target, arg))
    if not steps:
        main = Step("main", cells=orphans, first=orphans[0] if orphans else None)
        steps, order, orphans = {"main": main}, ["main"], []
    elif orphans:  # code above the first step tag belongs to the first step
        steps[order[0]].cells[:0] = orphans
    for target, name in models:
        target = target or steps[order[0]]
        target.models.append(name)
        target.model_cells[name] = model_cells[name]
    deps: dict[str, list] = {}
    for i, name in enumerate(order):
        step = steps[name]
        for dep in step.after:
            if dep not in steps:
                known = ", ".join(order)
                raise PipelineError(f"{step.after_cells[dep].where} says after:{dep}, but no cell is tagged "
                                    f"step:{dep}; the steps are: {known}.", **step.after_cells[dep].at)
            if dep == name:
                raise PipelineError(f"{step.after_cells[dep].where} makes step {name!r} run after itself.",
                                    **step.after_cells[dep].at)
        deps[name] = list(step.after) if step.after else ([order[i - 1]] if i else [])
    topo = _toposort(order, deps, steps)
    params = _params(parameters)
    spec = nb.metadata.get("kernelspec", {}) or {}
    lang = (nb.metadata.get("language_info", {}) or {}).get("name") or spec.get("language") or "python"
    return Parsed([steps[n] for n in topo], deps, imports, functions, parameters, params,
                  spec.get("name") or "python3", lang)


def _toposort(order: list, deps: dict, steps: dict) -> list:
    done, visiting, out = set(), [], []

    def visit(name):
        if name in done:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            step = steps[cycle[-2]]
            cell = step.after_cells.get(name, step.first)
            raise PipelineError(f"{cell.where if cell else 'a cell'}: the after: tags make a cycle "
                                f"({' -> '.join(reversed(cycle))}); a step can only run after steps that do "
                                "not (indirectly) run after it.", **(cell.at if cell else {}))
        visiting.append(name)
        for dep in deps[name]:
            visit(dep)
        visiting.pop()
        done.add(name)
        out.append(name)

    for name in order:
        visit(name)
    return out


def _params(cells: list) -> dict:
    params, seen = {}, {}
    for cell in cells:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as exc:
            raise PipelineError(f"the parameters {cell.where} is not valid Python ({exc.msg}, line {exc.lineno}).",
                                **cell.at) from None
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # a docstring or a bare comment string
            if not (isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None):
                raise PipelineError(f"the parameters {cell.where} holds `{ast.unparse(node)[:60]}`; a parameters "
                                    "cell holds only assignments of literal values, e.g. n_estimators = 100.",
                                    **cell.at)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name):
                raise PipelineError(f"the parameters {cell.where} assigns `{ast.unparse(node)[:60]}`; assign one "
                                    "name per line, e.g. n_estimators = 100.", **cell.at)
            name = targets[0].id
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise PipelineError(f"parameter {name!r} in {cell.where} is `{ast.unparse(node.value)[:60]}`, not a "
                                    "literal; use an int, float, str, bool, list or dict literal.", **cell.at) from None
            if name in seen:
                raise PipelineError(f"parameter {name!r} is defined twice: in {seen[name].where} and again in "
                                    f"{cell.where}; keep one definition.", **cell.at)
            seen[name] = cell
            params[name] = value
    return params
