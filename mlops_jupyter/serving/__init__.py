"""MLflow model -> FastAPI serving package (``generate_package``), and running one (``serve``)."""

from .generate import generate_package
from .run import serve

__all__ = ["generate_package", "serve"]
