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


def short(value) -> str:
    """A param (always text in MLflow) that is a long float reads better rounded, in a table."""
    if isinstance(value, str):
        try:
            return fmt(float(value)) if "." in value and len(value) > 8 else value
        except ValueError:
            return value
    return fmt(value)


def pairs(d: dict, limit: int = 6) -> str:
    items = [f"{k}={short(v)}" for k, v in sorted(d.items())]
    return ", ".join(items[:limit]) + (f", +{len(items) - limit}" if len(items) > limit else "")


CHILD_KIND = {"sweep": "trial", "pipeline": "step"}


def runs_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per run, its ``children`` (a sweep's trials, a pipeline's steps) nested under it."""
    header = ["run", "name", "kind", "status", "started", "took", "cell", "params", "metrics"]

    def row(r: dict, indent: str, kind: str) -> list[str]:
        return [indent + r["run_id"][:8], r.get("run_name") or "", kind, r["status"], when(r.get("start_time")),
                duration(r), f"[{r['execution_count']}]" if r.get("execution_count") is not None else "",
                pairs(r.get("params", {})), pairs(r.get("metrics", {}))]

    rows = []
    for r in runs:
        kind = {"sweep": "sweep", "pipeline": "pipeline", "pipeline-step": "step", "retrain": "retrain"}.get(
            r.get("kind"), "cell")
        rows.append(row(r, "", kind))
        rows.extend(row(c, "└ ", CHILD_KIND.get(kind, "child")) for c in r.get("children", []))
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


MARKED = "background:#fef3c7;font-weight:600"


def html_table(header: list[str], rows: list[list[str]], marks: list[bool] | None = None, caption: str = "",
               style: str = MARKED) -> str:
    """``marks``: rows drawn with ``style`` (differences in a comparison, the best trial of a sweep)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        attr = f" style='{style}'" if marks and marks[i] else ""
        body.append(f"<tr{attr}>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>"
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


class Picture:
    """An SVG drawing (the pipeline's DAG) inline in notebooks; where it lives, in text."""

    def __init__(self, svg: str, text: str):
        self.svg, self.text = svg, text

    def __repr__(self):
        return self.text

    def _repr_svg_(self):
        return self.svg


class Document:
    """An HTML document part (a report) in notebooks; its Markdown in text."""

    def __init__(self, html_text: str, text: str):
        self.html_text, self.text = html_text, text

    def __repr__(self):
        return self.text

    def _repr_html_(self):
        return self.html_text


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def snapshot_rows(snaps) -> tuple[list[str], list[list[str]]]:
    header = ["snapshot", "path", "when", "message", "size", "md5", "runs that read it"]
    rows = [[s.id, s.path, when(s.time_ms), s.message, human_bytes(s.size), s.md5,
             ", ".join(r["run_id"][:8] for r in s.runs)] for s in snaps]
    return header, rows


def reproduction_rows(result) -> tuple[list[str], list[list[str]], list[bool]]:
    header = ["metric", f"original {result.original[:8]}", f"reproduced {(result.new or '')[:8]}"]
    rows, marks = [], []
    for name, (old, new) in result.metrics.items():
        rows.append([name, fmt(old), fmt(new)])
        marks.append(new is None or abs(new - old) > 1e-9 * max(1.0, abs(old)))
    return header, rows, marks


class ProgressLine:
    """A one-line progress bar that updates in place (notebook) or on its own line (terminal),
    shown only for work large enough to wait on."""

    MIN_BYTES = 100 << 20

    def __init__(self, label: str):
        self.label, self.handle, self.last = label, None, 0.0

    def update(self, done: int, total: int) -> None:
        if total < self.MIN_BYTES or (time.monotonic() - self.last < 0.5 and done < total):
            return
        self.last = time.monotonic()
        width = 30
        filled = int(width * done / total) if total else width
        text = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {100 * done / total:3.0f}% " \
               f"of {human_bytes(total)}"
        try:
            from IPython.display import display

            if self.handle is None:
                self.handle = display(_Text(text), display_id=True)
            else:
                self.handle.update(_Text(text))
        except Exception:  # noqa: BLE001 - progress is a courtesy; never fail the work for it
            pass


class _Text:
    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


def in_worker(fn, *args):
    """Run ``fn`` off the calling (kernel main) thread and wait; an interrupt waits for it to finish
    cleanly, so nothing is left half-written."""
    import threading

    box = {}

    def work():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            print("mlops: finishing the current step so nothing is left half-written...")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- the registry ---------------------------------------------------------------------------------
def gate_rows(gates: list[dict]) -> tuple[list, list]:
    return ["gate", "result", "detail"], [[g["gate"], g["status"], g["detail"]] for g in gates]


def moved_text(moved) -> str:
    """What a register / promote / rollback did, with each gate's result when gates ran."""
    lines = []
    if moved.gates:
        lines.append(text_table(*gate_rows(moved.gates)))
    lines.append(moved.summary())
    return "\n".join(lines)


def failed_gates_text(exc) -> str:
    """A refused promotion's gate table (every gate's result), shown above its one-paragraph error."""
    return text_table(*gate_rows(exc.gates))


def model_rows(models: list[dict]) -> tuple[list, list]:
    rows = []
    for m in models:
        if m.get("error"):
            rows.append([m["env"], "", "", f"not answering: {m['error']}"])
            continue
        aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted(m["aliases"].items()))
        rows.append([m["env"], m["name"], ", ".join(m["versions"]), aliases])
    return ["env", "model", "versions", "aliases"], rows


def history_rows(hist: dict) -> tuple[list, list]:
    rows = []
    for r in hist["records"]:
        moved = f"{r.get('previous') or '-'} -> {r['version']}" if r.get("alias") else r["version"]
        gates = ", ".join(f"{g['gate']} {g['status']}" for g in r.get("gates") or [])
        rows.append([r["when"], r["env"], r["action"], moved, r["who"], gates, r.get("reason") or ""])
    return ["when", "env", "action", "version", "who", "gates", "reason"], rows


def holders_text(hist: dict, at) -> str:
    when = at.isoformat(timespec="seconds") if at else "now"
    held = "; ".join(f"@{env} -> version {v}" for env, v in sorted(hist["holders"].items())) or "no alias set"
    silent = f" (not answering: {', '.join(hist['unreachable'])})" if hist.get("unreachable") else ""
    return f"at {when}: {held}{silent}"
