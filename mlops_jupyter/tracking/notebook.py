"""Which notebook a kernel runs, and what the saved notebook says about its cells (ids, parameters cells).

Stdlib only: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PARAM_TAGS = {"parameters", "pipeline-parameters", "injected-parameters"}


class NotebookInfo:
    """The kernel's notebook (found once) and an index of its saved cells (re-read when the file changes)."""

    def __init__(self, shell):
        self.shell = shell
        self._path = None
        self._parent_notebook = ...
        self._cache = (None, None)
        self.param_sources: dict[str, str] = {}  # parameters cells' latest sources, in execution order

    def path(self) -> str | None:
        """The notebook this kernel runs: JupyterLab's session name, papermill's input path, or
        MLOPS_NOTEBOOK; never the kernel's own argv."""
        if self._path:
            return self._path
        ns = self.shell.user_ns
        for cand in (os.environ.get("MLOPS_NOTEBOOK"), os.environ.get("JPY_SESSION_NAME"),
                     ns.get("__vsc_ipynb_file__"), ns.get("PAPERMILL_INPUT_PATH"), self.papermill_input()):
            if isinstance(cand, str) and cand.endswith(".ipynb"):
                self._path = os.path.abspath(cand)
                return self._path
        return None

    def papermill_input(self) -> str | None:
        """papermill starts the kernel itself: its input notebook is on the parent's command line."""
        if self._parent_notebook is ...:
            self._parent_notebook = None
            try:
                import psutil

                parent = psutil.Process(os.getppid())
                argv = parent.cmdline()
                if any(Path(a).name in ("papermill", "papermill.exe") or a == "papermill" for a in argv[:3]):
                    first = next((a for a in argv[1:] if a.endswith(".ipynb")), None)
                    # papermill chdirs to --cwd while it runs: the shell's PWD is where the path started
                    bases = [os.environ.get("PWD"), parent.cwd()]
                    found = [os.path.join(b, first) for b in bases if b and first]
                    self._parent_notebook = next((f for f in found if os.path.isfile(f)), None)
            except Exception:  # noqa: BLE001 - no psutil, no permission: just unknown
                pass
        return self._parent_notebook

    def _index(self) -> tuple[set, set, dict, dict]:
        """(ids of parameters cells, their sources, {code cell source: its id}, {code cell id: (position,
        source)}) of the saved notebook."""
        nb = self.path()
        try:
            st = os.stat(nb) if nb else None
        except OSError:
            st = None
        if st is None:
            return set(), set(), {}, {}
        stamp = (st.st_mtime_ns, st.st_size)
        if self._cache[0] != stamp:
            ids, sources, by_source, by_id = set(), set(), {}, {}
            try:
                with open(nb, encoding="utf-8") as fh:
                    cells = json.load(fh).get("cells", [])
                for pos, cell in enumerate(cells):
                    src = cell.get("source", "")
                    src = "".join(src) if isinstance(src, list) else src
                    if cell.get("id") and cell.get("cell_type") == "code":
                        by_source.setdefault(src, cell["id"])
                        by_id[cell["id"]] = (pos, src)
                    if PARAM_TAGS & set(cell.get("metadata", {}).get("tags", [])):
                        sources.add(src)
                        if cell.get("id"):
                            ids.add(cell["id"])
            except (OSError, ValueError, AttributeError):
                pass
            self._cache = (stamp, (ids, sources, by_source, by_id))
        return self._cache[1]

    def cell_id_for(self, raw: str, cell_id: str | None) -> str | None:
        """The cell's id: from the frontend when it sends one (JupyterLab), else by finding the
        source in the saved notebook (papermill and nbclient send none)."""
        return cell_id or self._index()[2].get(raw)

    def is_parameters_cell(self, raw: str, cell_id: str | None) -> bool:
        if raw.lstrip().startswith("# Parameters"):  # papermill's injected-parameters cell
            return True
        ids, sources, _, _ = self._index()
        return (cell_id is not None and cell_id in ids) or raw in sources

    def saved_cells(self) -> dict:
        """{code cell id: (position, source)} of the saved notebook (empty when unknown)."""
        return self._index()[3]

    def sweeps_here(self) -> bool:
        """Whether the saved notebook holds a ``%%mlops sweep`` cell that runs on this machine (no --address)."""
        for _, src in self.saved_cells().values():
            first = src.lstrip().split("\n", 1)[0]
            if first.startswith("%%mlops sweep") and "--address" not in first:
                return True
        return False

    def note_cell(self, raw: str, cell_id: str | None) -> None:
        """Remember the latest source of each parameters cell, in execution order."""
        if self.is_parameters_cell(raw, cell_id):
            key = cell_id or ("injected" if raw.lstrip().startswith("# Parameters") else raw)
            self.param_sources.pop(key, None)
            self.param_sources[key] = raw

    def collect_param_history(self) -> None:
        """Parameters cells run before tracking was configured still count."""
        for raw in self.shell.user_ns.get("In", [])[1:]:
            if isinstance(raw, str):
                self.note_cell(raw, None)
