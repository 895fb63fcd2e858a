"""Tables for the front doors: plain text (terminals, CI logs) and HTML (notebooks)."""

from __future__ import annotations

import html
import time


def when(ms) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else ""


def duration(run: dict) -> str:
    if not run.get("start_time") or not run.get("end_time"):
        return ""
    s = (run["end_time"] - run["start_time"]) / 1000
    return f"{s:.2f}s" if s < 60 else f"{s / 60:.1f}m"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def pairs(d: dict, limit: int = 6) -> str:
    items = [f"{k}={fmt(v)}" for k, v in sorted(d.items())]
    return ", ".join(items[:limit]) + (f", +{len(items) - limit}" if len(items) > limit else "")


def runs_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "name", "status", "started", "took", "cell", "params", "metrics"]
    rows = [[r["run_id"][:8], r.get("run_name") or "", r["status"], when(r.get("start_time")), duration(r),
             f"[{r['execution_count']}]" if r.get("execution_count") is not None else "",
             pairs(r.get("params", {})), pairs(r.get("metrics", {}))] for r in runs]
    return header, rows


def compare_rows(cmp: dict) -> tuple[list[str], list[list[str]], list[bool]]:
    header = ["", *[r["run_id"][:8] for r in cmp["runs"]]]
    rows, marks = [], []
    for kind in ("params", "metrics"):
        for key, values in cmp[kind].items():
            rows.append([f"{kind[:-1]} {key}", *[fmt(v) for v in values]])
            marks.append(key in cmp["differs"][kind])
    return header, rows, marks


def text_table(header: list[str], rows: list[list[str]], marks: list[bool] | None = None) -> str:
    if marks is not None:
        header = [" ", *header]
        rows = [["≠" if m else " ", *row] for row, m in zip(rows, marks)]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def html_table(header: list[str], rows: list[list[str]], marks: list[bool] | None = None, caption: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        style = " style='background:#fef3c7;font-weight:600'" if marks and marks[i] else ""
        body.append(f"<tr{style}>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>"
                                             for c in row) + "</tr>")
    cap = f"<caption style='caption-side:bottom;text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table class='mlops-table'>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Table:
    """Displays as HTML in notebooks and as aligned text elsewhere."""

    def __init__(self, header, rows, marks=None, caption=""):
        self.header, self.rows, self.marks, self.caption = header, rows, marks, caption

    def __repr__(self):
        text = text_table(self.header, self.rows, self.marks) if self.rows else "(no rows)"
        return text + (f"\n{self.caption}" if self.caption else "")

    def _repr_html_(self):
        return html_table(self.header, self.rows, self.marks, self.caption)
