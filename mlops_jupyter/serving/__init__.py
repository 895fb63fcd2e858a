"""MLflow model -> FastAPI serving package (``generate_package``), running one (``serve``), its OCI image
(``build_image``) and its Kubernetes manifests (``write_manifests``)."""

from .build import build_image
from .generate import generate_package
from .manifests import write_manifests
from .run import serve

__all__ = ["build_image", "generate_package", "serve", "write_manifests"]
