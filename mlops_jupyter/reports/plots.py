"""The report's plots, as PNG files: the metrics side by side, a curve per metric logged at several steps, and
the confusion matrices and residual plots the runs logged as images. A plot that cannot be made becomes a line in
the report, never a silent gap."""

from __future__ import annotations

import re
from pathlib import Path

MAX_BARS = 30
PNG = b"\x89PNG\r\n\x1a\n"
LOGGED = ("confusion", "residual")  # the image artifacts a report shows when a run logged them
DPI = 100


def make(settings, report, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        report.problems.append("matplotlib is not installed, so no plot was made (pip install matplotlib)")
        return
    both = [(n, o, c) for n, o, c in report.metrics if o is not None and c is not None][:MAX_BARS]
    if both:
        _try(report, "metrics, baseline vs this run", folder / "metrics.png", lambda: _bars(plt, both))
    _curves(settings, report, folder, plt)
    _logged_images(settings, report, folder)


def _try(report, title: str, path: Path, draw) -> None:
    import matplotlib.pyplot as plt

    try:
        fig = draw()
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
    except Exception as exc:  # noqa: BLE001 - one plot failing is a line in the report, not a failed report
        plt.close("all")
        report.problems.append(f"{title}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        return
    report.plots.append((title, str(path)))


def _bars(plt, rows: list):
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [o for _, o, _ in rows], height=0.4, label="baseline", color="#9e9e9e")
    ax.barh([i - 0.2 for i in y], [c for _, _, c in rows], height=0.4, label="this run", color="#1976d2")
    ax.set_yticks(list(y), [n for n, _, _ in rows])
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Metrics")
    return fig


def _metric_runs(side) -> dict:
    """report row name -> (run id, metric key) on one side (a pipeline's steps prefix their metrics)."""
    out = {k: (side.run_id, k) for k in side.run.data.metrics}
    for step, run in side.steps.items():
        out.update({f"{step}.{k}": (run.info.run_id, k) for k in run.data.metrics})
    return out


def _curves(settings, report, folder: Path, plt) -> None:
    from ..tracking import metric_history

    mine = _metric_runs(report.target)
    theirs = _metric_runs(report.baseline) if report.baseline else {}
    for name, (rid, key) in sorted(mine.items()):
        def history(where):
            run_id, metric = where
            return metric_history(settings, [run_id], [metric]).get(metric, {}).get(run_id, [])

        def draw(name=name, mine_at=(rid, key)):
            points = history(mine_at)
            if len(points) < 2:
                return None
            fig, ax = plt.subplots(figsize=(6, 3.2))
            if name in theirs:
                base = history(theirs[name])
                if base:
                    ax.plot([s for s, _ in base], [v for _, v in base], label="baseline", color="#9e9e9e")
            ax.plot([s for s, _ in points], [v for _, v in points], label="this run", color="#1976d2")
            ax.set_xlabel("step")
            ax.set_title(name)
            ax.legend()
            return fig

        try:
            fig = draw()
        except Exception as exc:  # noqa: BLE001 - said in the report
            report.problems.append(f"curve of {name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if fig is None:
            continue  # logged at one step: the table says it all
        _try(report, f"{name} by step", folder / f"curve-{_safe(name)}.png", lambda fig=fig: fig)


def _logged_images(settings, report, folder: Path) -> None:
    """The images the target's runs logged whose names say confusion matrix or residuals, copied beside."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(settings.tracking_uri)
    for label, run in [("", report.target.run), *((f"{s}: ", r) for s, r in report.target.steps.items())]:
        rid = run.info.run_id
        try:
            found = _images(client, rid, None)
        except Exception as exc:  # noqa: BLE001 - said in the report
            report.problems.append(f"images logged by run {rid[:8]}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        for path in found:
            dest = folder / f"{_safe(label + path)}"
            try:
                local = Path(download_artifacts(run_id=rid, artifact_path=path, dst_path=str(folder / ".download"),
                                                tracking_uri=settings.tracking_uri))
                with local.open("rb") as fh:
                    if fh.read(8) != PNG:
                        raise ValueError("the file is not a PNG image (cut short, or another format)")
                local.replace(dest)
            except Exception as exc:  # noqa: BLE001 - said in the report
                report.problems.append(f"{label}{path}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            report.plots.append((f"{label}{path}", str(dest)))
    _rmtree(folder / ".download")


def _images(client, run_id: str, path: str | None, depth: int = 0) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir and depth < 4:
            out += _images(client, run_id, item.path, depth + 1)
        elif item.path.lower().endswith(".png") and any(w in item.path.lower() for w in LOGGED):
            out.append(item.path)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_")[:120]


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
