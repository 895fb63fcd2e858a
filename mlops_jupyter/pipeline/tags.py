"""Cell tags -> steps: which cells form which step, the step order, the parameters.

Tags (Kale's names accepted as aliases): ``parameters`` | ``pipeline-parameters``,
``step:NAME`` | ``block:NAME``, ``after:NAME`` | ``prev:NAME``, ``imports``, ``functions``,
``metrics`` | ``pipeline-metrics``, ``model:NAME``, ``skip``, ``deps:PATH`` (a file or folder the step
reads that export cannot see in its code), ``resources:gpu=1;cpu=4;memory=8G`` | Kale's
``limit:nvidia.com/gpu:N``, ``limit:cpu:N``, ``limit:memory:SIZE``. An untagged cell joins the step above
it (as in Kale, untagged cells right after a ``pipeline-parameters`` cell join the parameters); a notebook
without step tags is one step named ``main``; a step without ``after:`` follows the step before it. A tag
export does not know is reported in ``Parsed.warnings``, naming the cell.
"""

from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass, field

from ..errors import PipelineError
from . import resources

ALIASES = {"pipeline-parameters": "parameters", "pipeline-metrics": "metrics", "block": "step", "prev": "after"}
PLAIN = ("parameters", "imports", "functions", "metrics", "skip")
NAMED = ("step", "after", "model")
VALUED = ("deps", "resources", "limit")  # an argument that is not a name: a path, a resource list
SHARED = ("parameters", "imports", "functions")  # cells every step notebook gets
EXAMPLES = {"deps": "data/train.csv", "resources": "gpu=1;cpu=4;memory=8G", "limit": "nvidia.com/gpu:1"}
KALE_PARAMETERS = "pipeline-parameters"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
KNOWN = ("parameters, imports, functions, metrics, skip, step:NAME, after:NAME, model:NAME, deps:PATH, "
         "resources:gpu=N;cpu=N;memory=SIZE, and Kale's pipeline-parameters, pipeline-metrics, block:, prev:, "
         "limit:")


@dataclass
class Cell:
    index: int          # position in the original notebook
    source: str
    kind: str = "code"  # code | imports | functions | parameters | metrics
    id: str | None = None  # the notebook cell's id
    follows: bool = False  # untagged, part of the parameters because it follows a pipeline-parameters cell

    @property
    def where(self) -> str:
        first = next((ln.strip() for ln in self.source.splitlines() if ln.strip()), "")
        return f"cell {self.index} ({first[:60]!r})"

    @property
    def at(self) -> dict:
        """The error fields that point at this cell."""
        return {"cell_index": self.index, "cell_id": self.id}

    def error(self, message: str) -> PipelineError:
        return PipelineError(message, **self.at)


@dataclass
class Step:
    name: str
    cells: list = field(default_factory=list)      # Cell, in notebook order (metrics cells included)
    after: list = field(default_factory=list)      # explicit after:/prev: names
    after_cells: dict = field(default_factory=dict)  # after-name -> Cell that named it
    models: list = field(default_factory=list)     # model:NAME tags seen on its cells
    model_cells: dict = field(default_factory=dict)  # model name -> Cell that tagged it
    reads: dict = field(default_factory=dict)      # deps:PATH path, as tagged -> Cell that tagged it
    resources: dict = field(default_factory=dict)  # gpu / cpu / memory, from resources: and limit: tags
    resource_cells: dict = field(default_factory=dict)  # resource -> Cell that asked for it
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
    warnings: list = field(default_factory=list)  # one line per tag export does not use, naming the cell


def read_tags(cell) -> tuple[list, list]:
    """([(tag, argument)] with aliases resolved, [tags export does not know, as written]) of a cell."""
    known, unknown = [], []
    for raw in cell.get("metadata", {}).get("tags", []) or []:
        raw = str(raw).strip()
        name, sep, arg = raw.partition(":")
        name = ALIASES.get(name, name)
        if sep and name in NAMED + VALUED:
            known.append((name, arg.strip()))
        elif not sep and name in PLAIN:
            known.append((name, None))
        elif raw:
            unknown.append(raw)
    return known, unknown


def cell_tags(cell) -> list[tuple[str, str | None]]:
    """(tag, argument) pairs of a cell with aliases resolved; unknown tags are left out (``read_tags`` lists
    them: export warns about each)."""
    return read_tags(cell)[0]


def _unknown(cell: Cell, tag: str) -> str:
    head = ALIASES.get(tag.partition(":")[0], tag.partition(":")[0])
    if head in NAMED + VALUED:
        hint = f"{head} takes an argument, e.g. {head}:{EXAMPLES.get(head, 'train')}"
    elif head in PLAIN:
        hint = f"{head} takes no argument"
    else:
        hint = f"the pipeline tags are {KNOWN}"
    return f"{cell.where} has the tag {tag!r}, which export does not use: it is ignored ({hint})."


def _resources(cell: Cell, tags: list) -> dict:
    out = {}
    for tag, arg in tags:
        if tag in ("resources", "limit"):
            try:
                asks = resources.parse(tag, arg)
            except ValueError as exc:
                raise cell.error(f"{cell.where}: {exc}.") from None
            for key, value in asks.items():
                if out.get(key, value) != value:
                    raise cell.error(f"{cell.where} asks for {key} {out[key]}, and {tag}:{arg} asks for {key} "
                                     f"{value}; keep one of the two tags.")
                out[key] = value
    return out


def _assign(step: Step, cell: Cell, tags: list, asks: dict) -> None:
    """The step-level tags of ``cell`` (after:, deps:, resources) onto ``step``."""
    for tag, arg in tags:
        if tag == "after" and arg not in step.after:
            step.after.append(arg)
            step.after_cells[arg] = cell
        elif tag == "deps":
            step.reads.setdefault(arg, cell)
    for key, value in asks.items():
        if key in step.resources and step.resources[key] != value:
            other = step.resource_cells[key]
            raise cell.error(f"{other.where} asks for {key} {step.resources[key]}, and {cell.where} asks for "
                             f"{key} {value}, both for step {step.name!r}; keep one of the two tags.")
        step.resources[key] = value
        step.resource_cells[key] = cell


def parse(nb) -> Parsed:
    """Split an nbformat notebook into steps; raises PipelineError naming the cell at fault."""
    steps: dict[str, Step] = {}
    order: list[str] = []
    imports, functions, parameters = [], [], []
    current: Step | None = None
    orphans: list[Cell] = []  # untagged code before the first step tag, and the step-level tags on it
    orphan_tags: list = []
    model_cells: dict[str, Cell] = {}
    models: list = []  # (step or None for code above the first step tag, model name)
    warnings: list = []
    follows = False  # Kale: untagged cells right after a pipeline-parameters cell are parameters too
    for index, nbcell in enumerate(nb.cells):
        if nbcell.get("cell_type") != "code":
            continue
        tags, unknown = read_tags(nbcell)
        kinds = {t for t, _ in tags}
        cell = Cell(index, nbcell.get("source", ""), id=nbcell.get("id"))
        warnings += [_unknown(cell, t) for t in unknown]
        if "skip" in kinds:
            continue
        for tag, arg in tags:
            if tag == "model" and (not (arg or "").isidentifier() or keyword.iskeyword(arg)):
                raise cell.error(f"{cell.where} has the tag model:{arg!r}; model:NAME names the variable that "
                                 "holds the fitted model when its step ends, e.g. model:clf for `clf = "
                                 "LogisticRegression().fit(X, y)`.")
            if tag in NAMED and not _NAME.match(arg or ""):
                raise cell.error(f"{cell.where} has the tag {tag}:{arg!r}; a step name is letters, digits, "
                                 f"'_' or '-', e.g. {tag}:train.")
            if tag == "deps" and not arg:
                raise cell.error(f"{cell.where} has the tag 'deps:' with no path; deps:PATH names a file or "
                                 "folder the step reads, relative to the notebook, e.g. deps:data/train.csv.")
        asks = _resources(cell, tags)
        if follows and not tags:
            cell.kind, cell.follows = "parameters", True
            parameters.append(cell)
            continue
        raw = [str(t).strip() for t in nbcell.get("metadata", {}).get("tags", []) or []]
        follows = KALE_PARAMETERS in raw
        shared = next((k for k in SHARED if k in kinds), None)
        if shared:  # cells every step notebook gets, not part of any step
            stepwise = [f"{t}:{a}" for t, a in tags if t in ("model", "deps", "resources", "limit")]
            if stepwise:
                article = "an" if shared == "imports" else "a"
                raise cell.error(f"{cell.where} is tagged {shared} and {stepwise[0]}; {article} {shared} cell runs "
                                 f"in every step, so tag {stepwise[0]} on a cell of the step it is for.")
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
            orphan_tags.append((cell, tags, asks))
        else:
            target.cells.append(cell)
            _assign(target, cell, tags, asks)
        for tag, arg in tags:
            if tag == "model":
                if arg in model_cells:
                    raise cell.error(f"{cell.where} has the tag model:{arg}, and so has {model_cells[arg].where}; "
                                     f"each model gets one serving package (serving/{arg}): tag one cell.")
                model_cells[arg] = cell
                models.append((target, arg))
    if not steps:
        main = Step("main", first=orphans[0] if orphans else None)
        steps, order = {"main": main}, ["main"]
    first = steps[order[0]]
    first.cells[:0] = orphans  # code above the first step tag belongs to the first step
    for cell, tags, asks in orphan_tags:
        _assign(first, cell, tags, asks)
    for target, name in models:
        target = target or first
        target.models.append(name)
        target.model_cells[name] = model_cells[name]
    deps: dict[str, list] = {}
    for i, name in enumerate(order):
        step = steps[name]
        for dep in step.after:
            if dep not in steps:
                known = ", ".join(order)
                raise step.after_cells[dep].error(f"{step.after_cells[dep].where} says after:{dep}, but no cell "
                                                  f"is tagged step:{dep}; the steps are: {known}.")
            if dep == name:
                raise step.after_cells[dep].error(f"{step.after_cells[dep].where} makes step {name!r} run after "
                                                  "itself.")
        deps[name] = list(step.after) if step.after else ([order[i - 1]] if i else [])
    topo = _toposort(order, deps, steps)
    params = _params(parameters)
    spec = nb.metadata.get("kernelspec", {}) or {}
    lang = (nb.metadata.get("language_info", {}) or {}).get("name") or spec.get("language") or "python"
    return Parsed([steps[n] for n in topo], deps, imports, functions, parameters, params,
                  spec.get("name") or "python3", lang, warnings)


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
                                "not (indirectly) run after it.", cell_index=cell.index if cell else None,
                                cell_id=cell.id if cell else None)
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
        # Kale's rule made an untagged cell part of the parameters: say so, and how to make it a step's
        why = (" (it has no tags and follows a pipeline-parameters cell, so, as in Kale, it is part of the "
               "parameters; tag it step:NAME to make it code of a step)") if cell.follows else ""
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as exc:
            raise cell.error(f"the parameters {cell.where}{why} is not valid Python ({exc.msg}, line "
                             f"{exc.lineno}).") from None
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # a docstring or a bare comment string
            if not (isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None):
                raise cell.error(f"the parameters {cell.where}{why} holds `{ast.unparse(node)[:60]}`; a parameters "
                                 "cell holds only assignments of literal values, e.g. n_estimators = 100.")
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name):
                raise cell.error(f"the parameters {cell.where}{why} assigns `{ast.unparse(node)[:60]}`; assign one "
                                 "name per line, e.g. n_estimators = 100.")
            name = targets[0].id
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise cell.error(f"parameter {name!r} in {cell.where}{why} is `{ast.unparse(node.value)[:60]}`, "
                                 "not a literal; use an int, float, str, bool, list or dict literal.") from None
            if name in seen:
                raise cell.error(f"parameter {name!r} is defined twice: in {seen[name].where} and again in "
                                 f"{cell.where}; keep one definition.")
            seen[name] = cell
            params[name] = value
    return params
