"""MLflow model -> FastAPI serving package (``generate_package``), the model a run logged
(``model_of_run``), and running a package (``serve``)."""

from .choose import model_of_run
from .generate import generate_package
from .run import serve

__all__ = ["generate_package", "model_of_run", "serve"]
