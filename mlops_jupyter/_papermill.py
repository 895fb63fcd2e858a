"""papermill's engine ``mlops`` (``papermill --engine mlops``, as ``make demo`` runs the examples): nbclient's
engine on CurveZMQ kernels, which start without ipykernel's "running over TCP without encryption" warning."""

from papermill.engines import NBClientEngine

from .quiet import kernel_manager_class


class Engine(NBClientEngine):
    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        kwargs.setdefault("kernel_manager_class", kernel_manager_class())
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
