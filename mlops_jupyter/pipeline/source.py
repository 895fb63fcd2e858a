"""The notebook behind an export: what export reads of it (its hash), whether an export is outdated, and
checks of its tags that write nothing. Stdlib only at import time (the server and ``pipeline status``
call these on every poll)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import MlopsError, PipelineError


def default_folder(notebook) -> Path:
    """Where a notebook's pipeline goes when no folder is given: ``NAME-pipeline`` beside ``NAME.ipynb``."""
    nb = Path(notebook).resolve()
    return nb.parent / f"{nb.stem}-pipeline"


def notebook_hash(notebook) -> str | None:
    """A hash of what export reads of ``notebook`` (its code cells' sources and tags); None if unreadable."""
    try:
        cells = json.loads(Path(notebook).read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    seen = [(c.get("source"), (c.get("metadata") or {}).get("tags")) for c in cells if c.get("cell_type") == "code"]
    return hashlib.sha1(json.dumps(seen, sort_keys=True, default=str).encode()).hexdigest()


def notebook_of(folder) -> str | None:
    """The absolute path of the notebook the pipeline in ``folder`` was exported from; None when ``folder``
    holds no readable export."""
    from .emit import load_pipeline

    try:
        pipe = load_pipeline(folder)
    except MlopsError:
        return None
    return os.path.normpath(pipe.folder / pipe.source) if pipe.source else None


def outdated(folder) -> str | None:
    """Why the export in ``folder`` no longer matches its notebook ("... changed since it was exported",
    "... no longer exists"), or None while it matches. Raises NotFound when ``folder`` holds no export."""
    from .emit import DEFINITION, load_pipeline

    pipe = load_pipeline(folder)
    if not pipe.source:
        return None
    nb = Path(os.path.normpath(pipe.folder / pipe.source))
    if not nb.is_file():
        return f"its notebook {nb} no longer exists"
    if pipe.source_hash:  # recorded by export: compare content
        changed = notebook_hash(nb) != pipe.source_hash
    else:  # an export made before hashes were recorded: compare times
        try:
            changed = nb.stat().st_mtime > (pipe.folder / DEFINITION).stat().st_mtime
        except OSError:
            changed = False
    return f"{nb} changed since it was exported" if changed else None


def check(notebook, out=None):
    """Everything an export of ``notebook`` into ``out`` (default ``default_folder``) would check (tags,
    steps, hand-offs, tagged models) without writing anything; returns the Pipeline it would write.
    Raises PipelineError (with ``notebook``, ``cell_index`` and ``cell_id``) or NotFound."""
    from .emit import export_notebook

    return export_notebook(notebook, out if out is not None else default_folder(notebook), write=False)


def check_cells(cells: list[dict]) -> dict:
    """Tags as the sidebar's tag editor holds them (``[{id, index, tags, source}]``, index = position in the
    notebook) checked with export's own parser: ``{ok, steps, errors: [{cell_id, index, message}]}``."""
    import nbformat

    from . import tags

    nb = nbformat.v4.new_notebook()
    by_index = {c["index"]: c for c in cells}
    for i in range(max(by_index, default=-1) + 1):  # markdown fillers keep the parser's indices the notebook's
        c = by_index.get(i)
        cell = nbformat.v4.new_code_cell(c.get("source", "")) if c else nbformat.v4.new_markdown_cell("")
        if c:
            cell.metadata["tags"] = c.get("tags", [])
        nb.cells.append(cell)
    try:
        parsed = tags.parse(nb)
    except PipelineError as exc:
        index = exc.fields.get("cell_index")
        cell_id = by_index[index].get("id") if index in by_index else None
        return {"ok": False, "steps": [], "errors": [{"cell_id": cell_id, "index": index,
                                                      "message": str(exc).replace(" ('')", "")}]}
    return {"ok": True, "steps": [s.name for s in parsed.steps], "errors": []}
