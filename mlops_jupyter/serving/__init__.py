"""MLflow model -> FastAPI serving package (``generate_package``), the model a run logged
(``model_of_run``), running a package (``serve``), its OCI image (``build_image``; what a build
would be refused for, ``check_build_request``; its last image, ``package_state``) and its Kubernetes
manifests (``write_manifests``)."""

from .build import build_image, check_build_request, package_state, package_tests
from .choose import model_of_run
from .generate import generate_package
from .manifests import write_manifests
from .run import serve

__all__ = ["build_image", "check_build_request", "package_state", "generate_package", "model_of_run", "serve", "write_manifests"]
