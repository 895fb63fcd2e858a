"""The notebook's widgets (ipywidgets): the runs table, a sweep's live view, a pipeline run's steps.

Each displays with a ``text/plain`` and a ``text/html`` rendering of the same content beside the widget view,
so papermill's saved notebook, nbconvert's HTML and a terminal show the table, not a widget repr. Display only:
the data and the actions (compare) come from the front door that builds them. Imported on first use
(ipywidgets costs ~0.2 s), never by ``%load_ext``.
"""

from __future__ import annotations

import html
import re

import ipywidgets as W

from . import _render

ROW_LIMIT = 200  # rows drawn in the table at once; filter or sort to reach the others
_FILTER = re.compile(r"^\s*([\w.\-/]+)\s*(>=|<=|!=|==|=|>|<)\s*(.+?)\s*$")
_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
        "=": lambda a, b: a == b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
_BEST = "background:#dcfce7;font-weight:600"


class _Rendered:
    """Mixin: the widget view plus text/plain and text/html of the same content (the class's ``text()`` and
    ``html()``)."""

    def __repr__(self):
        return self.text()

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        data.update({"text/plain": self.text(), "text/html": self.html()})
        return data


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_filter(text: str, known: set) -> list:
    """``lr>0.01, depth=3`` -> [(key, op, value)]; ValueError saying what is wrong."""
    out = []
    for part in filter(None, (p.strip() for p in re.split(r"[,;]", text))):
        m = _FILTER.match(part)
        if not m or m.group(3)[0] in "<>=!":
            raise ValueError(f"{part!r} is not a condition; write NAME OP VALUE with OP one of = != < <= > >=, "
                             "e.g. lr>0.01, depth=3")
        key, op, value = m.groups()
        if key not in known:
            names = ", ".join(sorted(known)) or "none yet"
            raise ValueError(f"no param or metric is named {key!r}; the runs have: {names}")
        out.append((key, op, value.strip("'\"")))
    return out


def _matches(row: dict, cond: tuple) -> bool:
    key, op, want = cond
    have = row["values"].get(key)
    if have is None:
        return False
    a, b = _number(have), _number(want)
    if a is not None and b is not None:
        return _OPS[op](a, b)
    return _OPS[op](str(have), want) if op in ("=", "==", "!=") else False


def flat_rows(runs: list[dict]) -> list[dict]:
    """One row per run and per child run (trial, step), with the text cells the tables show."""
    header, cells = _render.runs_rows(runs)
    flat = []
    for r in runs:
        flat.append((r, None))
        flat.extend((c, r["run_id"]) for c in r.get("children", []))
    rows = []
    for (run, parent), text in zip(flat, cells):
        rows.append({"id": run["run_id"], "parent": parent, "cells": text, "status": run["status"],
                     "name": run.get("run_name") or "", "start": run.get("start_time") or 0,
                     "took": ((run.get("end_time") or 0) - (run.get("start_time") or 0)) if run.get("end_time") else -1,
                     "params": run.get("params", {}), "metrics": run.get("metrics", {}),
                     "values": {**run.get("params", {}), **run.get("metrics", {})}})
    return rows


def bar_chart(points: list[tuple[str, float]], metric: str) -> str:
    """An SVG bar per (label, value): the metric across the runs shown."""
    if not points:
        return f"<div class='mlops-chart'>no run shown has metric {html.escape(metric)}</div>"
    points = points[:40]
    low = min(0.0, min(v for _, v in points))
    high = max(v for _, v in points)
    span = (high - low) or 1.0
    width, bar_h, left = 520, 16, 150
    out = [f"<svg class='mlops-chart' xmlns='http://www.w3.org/2000/svg' width='{width}' "
           f"height='{len(points) * (bar_h + 4) + 22}' font-family='sans-serif' font-size='11'>",
           f"<text x='0' y='12' font-weight='600'>{html.escape(metric)}</text>"]
    for i, (label, value) in enumerate(points):
        y = 20 + i * (bar_h + 4)
        w = max(1.0, (value - low) / span * (width - left - 70))
        out.append(f"<text x='{left - 6}' y='{y + 12}' text-anchor='end'>{html.escape(label)}</text>"
                   f"<rect x='{left}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='#6366f1'/>"
                   f"<text x='{left + w + 4:.1f}' y='{y + 12}'>{html.escape(_render.fmt(value))}</text>")
    out.append("</svg>")
    return "".join(out)


class RunsTable(_Rendered, W.VBox):
    """``%mlops runs``: sort, filter by status and by params/metrics, tick runs to compare, chart a metric."""

    def __init__(self, runs: list[dict], caption: str, compare=None):
        self.header, cells = _render.runs_rows(runs)
        self.caption, self.compare_fn = caption, compare
        self.rows = flat_rows(runs)
        self.shown: list[dict] = self.rows
        params = sorted({k for r in self.rows for k in r["params"]})
        metrics = sorted({k for r in self.rows for k in r["metrics"]})
        self.known = set(params) | set(metrics)
        statuses = sorted({r["status"] for r in self.rows})
        self.status = W.Dropdown(options=["all", *statuses], value="all", description="status",
                                 layout=W.Layout(width="190px"))
        self.query = W.Text(placeholder="e.g. lr>0.01, depth=3", description="filter", continuous_update=False,
                            layout=W.Layout(width="320px"))
        self.sort = W.Dropdown(options=[("started", "start"), ("name", "name"), ("status", "status"),
                                        ("took", "took"), *[(f"metric {m}", f"metric:{m}") for m in metrics],
                                        *[(f"param {p}", f"param:{p}") for p in params]],
                               value="start", description="sort by", layout=W.Layout(width="220px"))
        self.descending = W.Checkbox(value=True, description="descending", indent=False,
                                     layout=W.Layout(width="110px"))
        self.note = W.HTML()
        self.table = W.HTML()
        self.pick = W.SelectMultiple(options=[], rows=6, description="compare", layout=W.Layout(width="420px"))
        self.compare_button = W.Button(description="compare ticked runs", icon="columns",
                                       tooltip="params and metrics of the ticked runs side by side",
                                       layout=W.Layout(width="auto"))
        self.compared = W.HTML()
        self.chart_metric = W.Dropdown(options=metrics, value=metrics[0] if metrics else None, description="chart",
                                       layout=W.Layout(width="220px"))
        self.chart = W.HTML()
        for w in (self.status, self.query, self.sort, self.descending, self.chart_metric):
            w.observe(self._refresh, names="value")
        self.compare_button.on_click(self._compare)
        controls = W.HBox([self.status, self.query, self.sort, self.descending])
        picking = W.HBox([self.pick, self.compare_button])
        parts = [controls, self.note, self.table, picking, self.compared]
        if metrics:
            parts += [self.chart_metric, self.chart]
        super().__init__(parts)
        self.add_class("mlops-runs")
        self._refresh()

    # ---- what is shown ---------------------------------------------------------------------
    def _key(self, row: dict):
        by = self.sort.value
        if by.startswith(("metric:", "param:")):
            v = row["metrics" if by.startswith("metric:") else "params"].get(by.partition(":")[2])
            n = _number(v)
            return (v is not None, n if n is not None else float("-inf"), str(v))
        return {"start": row["start"], "name": row["name"], "status": row["status"], "took": row["took"]}[by]

    def _refresh(self, _change=None) -> None:
        rows = self.rows if self.status.value == "all" else [r for r in self.rows if r["status"] == self.status.value]
        try:
            conds = parse_filter(self.query.value, self.known)
            self.note.value = ""
        except ValueError as exc:
            conds = []
            self.note.value = f"<div class='mlops-note' style='color:#b45309'>filter: {html.escape(str(exc), quote=False)}</div>"
        rows = [r for r in rows if all(_matches(r, c) for c in conds)]
        rows = sorted(rows, key=self._key, reverse=self.descending.value)
        if self.sort.value.startswith(("metric:", "param:")) and self.descending.value is False:
            rows = [r for r in rows if self._key(r)[0]] + [r for r in rows if not self._key(r)[0]]  # blanks last
        self.shown = rows
        self.table.value = self._table_html(rows[:ROW_LIMIT], len(rows))
        ticked = [v for v in self.pick.value if any(r["id"] == v for r in rows)]
        self.pick.options = [(f"{r['id'][:8]} {r['name']}", r["id"]) for r in rows[:ROW_LIMIT]]
        self.pick.value = tuple(ticked)
        if self.chart_metric.value:
            metric = self.chart_metric.value
            self.chart.value = bar_chart([(f"{r['id'][:8]} {r['name']}"[:24], float(r["metrics"][metric]))
                                          for r in rows if _number(r["metrics"].get(metric)) is not None], metric)

    def _table_html(self, rows: list[dict], total: int) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.header)
        body = "".join(f"<tr data-run='{r['id']}'>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>"
                                                               for c in r["cells"]) + "</tr>" for r in rows)
        more = f" · showing {len(rows)} of {total}: filter or sort to see the others" if total > len(rows) else ""
        cap = html.escape(f"{self.caption} · {total} shown{more}")
        return (f"<table class='mlops-table'><caption style='caption-side:bottom;text-align:left'>{cap}</caption>"
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def _compare(self, _button=None) -> None:
        ids = list(self.pick.value)
        if len(ids) < 2:
            self.compared.value = "<div class='mlops-note'>tick two or more runs in the list, then compare.</div>"
            return
        try:
            table = self.compare_fn(ids)
        except Exception as exc:  # noqa: BLE001 - shown in the widget: a button has no cell to raise into
            self.compared.value = f"<div class='mlops-note' style='color:#b45309'>{html.escape(str(exc))}</div>"
            return
        command = "%mlops compare " + " ".join(i[:8] for i in ids)
        self.compared.value = f"<div class='mlops-note'><code>{html.escape(command)}</code></div>" + table._repr_html_()

    # ---- the static renderings -------------------------------------------------------------
    def text(self) -> str:
        return repr(_render.Table(self.header, [r["cells"] for r in self.rows], caption=self.caption))

    def html(self) -> str:
        return _render.html_table(self.header, [r["cells"] for r in self.rows], caption=self.caption)


class SweepView(_Rendered, W.VBox):
    """``%%mlops sweep``'s live view, updated in place: a progress bar, the counts and the best so far, and the
    trial table with the best trial highlighted."""

    def __init__(self, total: int):
        from .sweep import view

        self._view = view
        self.progress = view.Progress(total=total)
        self.bar = W.IntProgress(value=0, min=0, max=max(1, total), description="trials", bar_style="info",
                                 layout=W.Layout(width="420px"))
        self.head = W.HTML(self.progress._repr_html_())
        self.trials = W.HTML()
        super().__init__([self.bar, self.head, self.trials])
        self.add_class("mlops-sweep")

    def update(self, result) -> None:
        self.progress.result = result
        c = result.counts()
        self.bar.value = min(self.bar.max, c["FINISHED"] + c["FAILED"] + c["KILLED"])
        if result.interrupted or c["FAILED"]:
            self.bar.bar_style = "warning"
        elif self.bar.value >= self.bar.max:
            self.bar.bar_style = "success"
        self.head.value = self.progress._repr_html_()
        self.trials.value = self._trials_html()

    def _trials_html(self) -> str:
        header, rows, best = self._view.trial_table(self.progress.result)
        if not rows:
            return ""
        return _render.html_table(header, rows, [i == best for i in range(len(rows))], style=_BEST,
                                  caption="best trial highlighted")

    def text(self) -> str:
        header, rows, best = self._view.trial_table(self.progress.result)
        if not rows:
            return repr(self.progress)
        table = _render.text_table(["", *header], [["*" if i == best else "", *r] for i, r in enumerate(rows)])
        return f"{self.progress!r}\n{table}\n(* best trial)"

    def html(self) -> str:
        return self.progress._repr_html_() + self._trials_html()


SHOWN = {"executing": "running", "ran": "ran", "skipped": "unchanged", "failed": "failed", "blocked": "not run"}


class PipelineView(_Rendered, W.VBox):
    """``%mlops pipeline run``: the DAG coloured live (running, fresh, failed...), a bar, and a row per step."""

    def __init__(self, pipe, status_rows: list):
        from .pipeline import picture

        self._picture, self.pipe = picture, pipe
        self.states = picture.states(status_rows)  # how the steps stand before the run
        self.rows = {name: {"state": "waiting", "detail": ""} for name, _, _ in status_rows}
        self.lines: list[str] = []
        self.bar = W.IntProgress(value=0, min=0, max=max(1, len(pipe.steps)), description="steps",
                                 bar_style="info", layout=W.Layout(width="420px"))
        self.drawing = W.HTML(picture.svg(pipe, self.states))
        self.table = W.HTML(self._table_html())
        super().__init__([self.bar, self.drawing, self.table])
        self.add_class("mlops-pipeline")

    def step(self, name: str, status: str, result=None) -> None:
        """A step started executing or ended (called from the step's thread)."""
        row = self.rows[name]
        row["state"] = SHOWN.get(status, status)
        if result is not None:
            row["detail"] = (f"{result.seconds:.1f}s" if status == "ran" else "") + (
                f" {result.error.strip().splitlines()[-1]}" if result.error and result.error.strip() else "")
        self.states[name] = {"executing": "running", "ran": "fresh", "skipped": "fresh", "failed": "failed"}.get(
            status, self.states.get(name, "never run"))
        done = sum(1 for r in self.rows.values() if r["state"] not in ("waiting", "running"))
        self.bar.value = done
        if status in ("failed", "blocked"):
            self.bar.bar_style = "danger"
        elif done == len(self.rows) and self.bar.bar_style == "info":
            self.bar.bar_style = "success"
        self.drawing.value = self._picture.svg(self.pipe, self.states)
        self.table.value = self._table_html()

    def say(self, line: str) -> None:
        """The runner's own lines (why a step runs, where it failed): kept for the text rendering."""
        self.lines.append(line)

    def _cells(self) -> list[list[str]]:
        return [[name, r["state"], r["detail"].strip()] for name, r in self.rows.items()]

    def _table_html(self) -> str:
        return _render.html_table(["step", "state", "detail"], self._cells(),
                                  [r["state"] in ("failed", "not run") for r in self.rows.values()])

    def text(self) -> str:
        return "\n".join(self.lines) if self.lines else _render.text_table(["step", "state", "detail"], self._cells())

    def html(self) -> str:
        return self._picture.svg(self.pipe, self.states) + self._table_html()
