"""Keeping the product's noise out of the user's notebook and terminal, and leaving the user's own alone.

- Kernels the product starts (``mlops reproduce``, papermill's engine ``mlops`` in _papermill.py) talk
  CurveZMQ: encrypted on loopback too, so ipykernel has no reason to warn "Kernel is running over TCP without
  encryption" on every start.
- MLflow logs INFO lines to stderr (``Experiment ... does not exist. Creating a new experiment``); inside a
  kernel the product set up they would land under the user's cell: ``MLFLOW_LOGGING_LEVEL`` defaults to
  WARNING there, unless the user set it.

Stdlib only at import time: the kernel side loads with ``%load_ext``.
"""

from __future__ import annotations

import functools
import os


def quiet_engines() -> None:
    """In a kernel: MLflow's INFO lines off unless the user asked for them (set before mlflow configures its
    logger on import; applied to its logger when it is imported already)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import sys

    if "mlflow" in sys.modules:
        import logging

        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


@functools.cache
def kernel_manager_class():
    """jupyter_client's async kernel manager with CurveZMQ keys (when this libzmq has CURVE)."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            if zmq.has("curve") and self.curve_publickey is None:
                self.curve_publickey, self.curve_secretkey = zmq.curve_keypair()

    return EncryptedKernelManager
