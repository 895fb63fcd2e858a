"""The one-line summary under a tracked cell (text for terminals and saved notebooks, HTML for Lab).

Stdlib only: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import html


class Line:
    """The line: one line of text, and in HTML the run id links to the run in the MLflow UI (when a UI URL is
    known) or carries the command that opens one (``title``)."""

    def __init__(self, text: str, warn: bool = False, run_id: str | None = None, url: str | None = None,
                 title: str = ""):
        self.text, self.warn, self.run_id, self.url, self.title = text, warn, run_id, url, title

    def __repr__(self):
        return self.text

    def bundle(self) -> dict:
        return {"text/plain": self.text, "text/html": self._repr_html_()}

    def _repr_html_(self):
        color = "#b45309" if self.warn else "#4b5563"
        body = html.escape(self.text)
        if self.run_id and self.run_id[:8] in self.text:
            short = html.escape(self.run_id[:8])
            link = (f'<a href="{html.escape(self.url)}" target="_blank" rel="noopener">{short}</a>' if self.url
                    else f'<span style="text-decoration:underline dotted">{short}</span>')
            body = body.replace(short, link, 1)
        title = f' title="{html.escape(self.title)}"' if self.title else ""
        return f'<div class="mlops-run-line" style="font-family:monospace;font-size:12px;color:{color}"{title}>' \
               f"{body}</div>"


def summary(status: str, metrics: dict, problems: list) -> str:
    """``FINISHED · acc=0.8`` plus any problem with the cell's --metrics."""
    shown = " · ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    return status + (f" · {shown}" if shown else "") + "".join(f" · {p}" for p in problems)


def run_line(run_id: str | None, what: str, where: str, counts: dict | None = None, url: str | None = None) -> Line:
    """``mlops: run 3f2a9c81 FINISHED · acc=0.8`` (plus its artifacts once written: the run is complete); the
    full id, the counts and how to open the MLflow UI (``where``) are in the HTML's link and title."""
    text = f"mlops: run {run_id[:8] if run_id else '(id pending)'} {what}"
    title = f"run {run_id or '(id pending)'}"
    if counts:
        text += f" · {counts.get('artifacts', 0)} artifacts"
        title += f" · {counts.get('params', 0)} params · {counts.get('metrics', 0)} metrics"
    return Line(text, run_id=run_id, url=url, title=title + ("" if url else f" · open the MLflow UI: {where}"))


def waiting_line(reason: str, what: str, journal) -> Line:
    return Line(f"mlops: the tracking store is not answering ({reason}); this cell's run ({what}) waits in "
                f"{journal} and is written when the store is back.", warn=True)
