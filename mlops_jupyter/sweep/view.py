"""What a sweep shows: the live progress table, the one-line summary, the trials as a DataFrame,
and a parallel-coordinates plot of the trials against the metric."""

from __future__ import annotations

import html
import io
import sys
import threading

from .runner import SweepResult


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


class Progress:
    """The live table: displayed once with a display_id, then updated in place."""

    def __init__(self, result: SweepResult | None = None, total: int | None = None):
        self.result, self.total = result, total

    def _cells(self) -> list[tuple[str, str]]:
        r = self.result
        if r is None or not r.trials:
            return [("state", "starting trials…")]
        c, best, metric = r.counts(), r.best, r.spec.metric
        cells = [("done", f"{c['FINISHED']}" + (f" / {self.total}" if self.total else "")),
                 ("running", str(c["RUNNING"])), ("failed", str(c["FAILED"]))]
        if c["KILLED"]:
            cells.append(("killed", str(c["KILLED"])))
        cells.append((f"best {metric}", _fmt(best.metrics[metric]) if best else "–"))
        cells.append(("best params", _params(best.params) if best else "–"))
        cells.append(("elapsed", f"{r.seconds:.1f}s"))
        return cells

    def __repr__(self):
        return "mlops sweep · " + " · ".join(f"{k}: {v}" for k, v in self._cells())

    def _repr_html_(self):
        cells = self._cells()
        head = "".join(f"<th style='text-align:left'>{html.escape(k)}</th>" for k, _ in cells)
        body = "".join(f"<td style='text-align:left'>{html.escape(v)}</td>" for _, v in cells)
        return f"<table class='mlops-table mlops-sweep'><thead><tr>{head}</tr></thead><tbody><tr>{body}</tr></tbody></table>"


def trial_table(result: SweepResult | None) -> tuple[list[str], list[list[str]], int | None]:
    """The trials as (header, rows, index of the best row or None): number, status, params, metrics."""
    if result is None or not result.trials:
        return ["trial", "status"], [], None
    params = list(dict.fromkeys(k for t in result.trials for k in t.params))
    metric = result.spec.metric
    others = sorted({k for t in result.trials for k in t.metrics} - {metric})
    header = ["trial", "status", *params, metric, *others]
    best = result.best
    rows, best_row = [], None
    for i, t in enumerate(result.trials):
        rows.append([str(t.number), t.status, *[_fmt(t.params.get(p, "")) for p in params],
                     *[_fmt(t.metrics[m]) if m in t.metrics else "" for m in (metric, *others)]])
        if best is not None and t is best:
            best_row = i
    return header, rows, best_row


def summary(result: SweepResult) -> str:
    c, best, metric = result.counts(), result.best, result.spec.metric
    nodes = {t.node for t in result.trials if t.node}
    text = f"mlops: sweep {len(result.trials)} trials · {c['FINISHED']} finished · {c['FAILED']} failed"
    if c["KILLED"]:
        text += f" · {c['KILLED']} killed"
    if result.interrupted:
        text += " · interrupted"
    text += f" · {result.seconds:.1f}s on {len(nodes) or len(result.nodes)} node(s)"
    if best:
        text += f" · best {metric}={_fmt(best.metrics[metric])} with {_params(best.params)}"
    else:
        text += f" · no trial produced {metric}"
    return text + " · `best_params` and `sweep` are in the namespace"


def frame(result: SweepResult):
    """One row per trial: params, metrics, status, node, GPU ids, seconds, attempts, first error line."""
    import pandas as pd

    rows = []
    for t in result.trials:
        error = t.error.strip().splitlines()[-1] if t.error.strip() else ""
        rows.append({"trial": t.number, "status": t.status, **t.params, **t.metrics, "node": t.node[:8],
                     "gpu_ids": t.gpu_ids, "seconds": round((t.end or t.start) - t.start, 3),
                     "attempts": t.attempts, "stopped_early": t.stopped_early, "error": error})
    return pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()


def warm() -> None:
    """Import pandas and matplotlib for ``frame`` and ``parallel_plot`` in a thread, while the trials run: a
    first sweep's end would otherwise wait half a second for them."""

    def imports() -> None:
        try:
            import pandas  # noqa: F401
            from matplotlib.backends import backend_agg  # noqa: F401
            from matplotlib.figure import Figure  # noqa: F401
        except ImportError:  # the sweep's end reports what is missing
            pass

    if "matplotlib.figure" not in sys.modules:
        threading.Thread(target=imports, name="mlops-sweep-imports", daemon=True).start()


def parallel_plot(df, params: list[str], metric: str) -> bytes | None:
    """PNG of the finished trials, one line each across the parameter axes, coloured by the metric."""
    if df.empty or metric not in df or not params:
        return None
    done = df[(df["status"] == "FINISHED") & df[metric].notna()]
    if len(done) < 2:
        return None
    from matplotlib import cm, colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    import pandas as pd

    axes = [*params, metric]
    scaled, ticks = {}, {}
    for col in axes:
        values = done[col]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            cats = sorted(values.astype(str).unique())
            values = values.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float)
            ticks[col] = cats
        low, high = float(values.min()), float(values.max())
        scaled[col] = (values - low) / (high - low) if high > low else values * 0 + 0.5
        ticks.setdefault(col, [_fmt(low), _fmt(high)] if high > low else [_fmt(low)])
    fig = Figure(figsize=(1.6 * len(axes) + 1.5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    norm = Normalize(done[metric].min(), done[metric].max())
    cmap = colormaps["viridis"]
    xs = list(range(len(axes)))
    for idx in done.index:
        ax.plot(xs, [scaled[c][idx] for c in axes], color=cmap(norm(done[metric][idx])), alpha=0.8, lw=1.4)
    for x, col in zip(xs, axes):
        ax.axvline(x, color="#9ca3af", lw=0.8)
        labels = ticks[col]
        positions = [i / (len(labels) - 1) for i in range(len(labels))] if len(labels) > 1 else [0.5]
        for pos, label in zip(positions, labels):
            ax.annotate(label, (x, pos), xytext=(3, 0), textcoords="offset points", fontsize=7, va="center")
    ax.set_xticks(xs, axes)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_title(f"{len(done)} trials · colour: {metric}", fontsize=9)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()
