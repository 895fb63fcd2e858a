"""The one-line summary under a tracked cell (text for terminals and saved notebooks, HTML for Lab).

Stdlib only: this module loads with ``%load_ext``.
"""

from __future__ import annotations

import html


class Line:
    def __init__(self, text: str, warn: bool = False):
        self.text, self.warn = text, warn

    def __repr__(self):
        return self.text

    def _repr_html_(self):
        color = "#b45309" if self.warn else "#4b5563"
        return f'<div class="mlops-run-line" style="font-family:monospace;font-size:12px;color:{color}">' \
               f"{html.escape(self.text)}</div>"


def summary(status: str, metrics: dict, problems: list) -> str:
    """``FINISHED · acc=0.8`` plus any problem with the cell's --metrics."""
    shown = " · ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    return status + (f" · {shown}" if shown else "") + "".join(f" · {p}" for p in problems)


def run_line(run_id: str | None, what: str, where: str, counts: dict | None = None) -> Line:
    if counts:
        what += f" · {counts.get('params', 0)} params · {counts.get('metrics', 0)} metrics" \
                f" · {counts.get('artifacts', 0)} artifacts"
    return Line(f"mlops: run {run_id or '(id pending)'} {what} · see {where}")


def waiting_line(reason: str, what: str, journal) -> Line:
    return Line(f"mlops: the tracking store is not answering ({reason}); this cell's run ({what}) waits in "
                f"{journal} and is written when the store is back.", warn=True)
