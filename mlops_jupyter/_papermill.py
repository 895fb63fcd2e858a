"""papermill's engine ``mlops`` (``papermill --engine mlops``, as ``make demo`` runs the examples; ``mlops reproduce``):
nbclient's engine on CurveZMQ kernels, which start without ipykernel's "running over TCP without encryption"
warning, and a kernel that dies before it answers is started again with new ports."""

import logging

from papermill.engines import NBClientEngine

from .quiet import kernel_manager_class

START_TRIES = 3  # kernels started for one notebook while each dies before it answers
DIED_AT_START = "Kernel died before replying to kernel_info"  # jupyter_client's words: no cell has run yet


class Engine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        """jupyter_client picks a kernel's ports free and closes them, and the kernel binds them a moment later:
        another process may take one in between (papermill's known race, with several runs or servers at once),
        and the kernel exits. nbclient then stops it and raises before any cell runs; the next try makes a new
        kernel manager, which picks new ports."""
        kwargs.setdefault("kernel_manager_class", kernel_manager_class())
        for tries_left in reversed(range(START_TRIES)):
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            except RuntimeError as exc:
                if str(exc) != DIED_AT_START or not tries_left or kwargs.get("km") is not None:
                    raise
                logging.getLogger("papermill").warning(
                    "mlops: the kernel died as it started, before running any cell (another process may have taken "
                    "one of its ports); starting it again with new ports")
