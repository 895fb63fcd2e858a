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
