"""mlops-jupyter: notebook cells as MLflow runs, data snapshots, sweeps, pipelines and serving.

Importing this package (and ``%load_ext mlops_jupyter``) stays cheap: mlflow, dvc, ray and
papermill are imported only by the operations that need them.
"""

__version__ = "0.1.0"


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
