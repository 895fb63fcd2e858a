"""Tagged notebook -> parameterized, incremental pipeline, run with papermill.

Stages, one module each: ``tags`` (cells -> steps), ``analysis`` (variable hand-off between
steps), ``emit`` (step notebooks, params.yaml, dvc.yaml, README, CI workflow), ``execute``
(incremental, parallel execution), ``state`` (hashes behind skip / status), ``serializers``
(the runtime save/load the step notebooks call). Importing this package is cheap: papermill
and mlflow are imported only when a step actually executes.
"""

from __future__ import annotations


def export(notebook, out):
    """Write the pipeline for a tagged ``notebook`` into folder ``out``; returns the Pipeline."""
    from .emit import export_notebook

    return export_notebook(notebook, out)


def run(folder, params=None, from_step=None, force=False, echo=print):
    """Run an exported pipeline incrementally; returns a RunResult."""
    from .execute import run_pipeline

    return run_pipeline(folder, params=params, from_step=from_step, force=force, echo=echo)


def status(folder):
    """[(step, state, reason)] with state one of fresh / stale / failed."""
    from .state import pipeline_status

    return pipeline_status(folder)


__all__ = ["export", "run", "status"]
