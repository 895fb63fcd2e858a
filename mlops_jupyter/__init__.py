"""mlops-jupyter: notebook cells as MLflow runs, data snapshots, sweeps, pipelines and serving.

Importing this package (and ``%load_ext mlops_jupyter``) stays cheap: mlflow, dvc, ray and
papermill are imported only by the operations that need them.
"""

__version__ = "0.1.0"

_reporter = None  # set by a sweep trial while its cell body runs (sweep/trial.py)


def report(**metrics) -> None:
    """Intermediate results from inside a ``%%mlops sweep`` cell, e.g. ``report(acc=acc)`` once per
    epoch: schedulers such as ``--scheduler asha`` stop weak trials early on them. The values must
    include the sweep's ``--metric``. Outside a sweep it does nothing, so the cell runs unchanged."""
    if _reporter is not None:
        _reporter(metrics)


def log_model(model, X, name: str = "model") -> None:
    """Log ``model``, fitted on ``X``, in the MLflow run of the tracked cell that calls it (``%%mlops run``, or
    any cell with autotrack on), as ``%%mlops run --model NAME`` does: the first rows of ``X`` as input example,
    the signature inferred from them, pinned requirements, and the types skops must trust. The model is kept
    as it is now and written off the cell's path; ``mlops serve generate runs:/RUN_ID/NAME`` then serves it."""
    from .errors import InvalidInput
    from .tracking.session import active_tracker

    tracker = active_tracker()
    if tracker is None:
        raise InvalidInput("mlops_jupyter.log_model needs the extension in this kernel: run %load_ext mlops_jupyter "
                           "first, then call it inside a tracked cell.")
    tracker.log_model(model, X, name)


def load_ipython_extension(ipython):
    """Register the ``%mlops`` magics and the cell-tracking hooks on an IPython shell."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload

    unload(ipython)


def _jupyter_server_extension_points():
    return [{"module": "mlops_jupyter.server"}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "mlops-jupyter"}]
