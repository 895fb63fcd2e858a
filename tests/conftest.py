# jp_fetch, jp_serverapp, jp_root_dir ... for the server extension tests (must be declared in the root conftest)
pytest_plugins = ["pytest_jupyter.jupyter_server"]

import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

# `make test` runs the suite in two pytest-xdist workers, one test file each at a time. ray.init() with no
# address joins the cluster named in <Ray's temp dir>/ray_current_cluster, which a ray.cluster_utils.Cluster
# writes: each worker gets its own temp dir, so a local sweep never lands on the other worker's cluster
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["RAY_TMPDIR"] = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(),
                                            f"ray-{os.environ['PYTEST_XDIST_WORKER']}")
from harness import CLEAN_VARS, make_git_project, recorder_pids, wait_for  # noqa: E402

from mlops_jupyter.sweep.runner import no_grpc_fork_handlers  # noqa: E402

# Ray forks its processes from the test process (ray.init, Cluster), as a `ray start` head forks a server for each
# Ray Client connection: once a test has used Ray Client here, gRPC must not run its fork handlers in those
# children (a GCS that crashed so made a later test's ray.init wait 30 s and fail)
no_grpc_fork_handlers()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh git project (pyproject.toml, one commit) as the working directory, no store settings."""
    for var in CLEAN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLOPS_RECORDER_EXIT_GRACE_S", "3")
    root = make_git_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    yield root
    # no test leaves a recorder behind
    wait_for(lambda: not recorder_pids(str(root)), timeout=30, what="recorder processes to exit")


@pytest.fixture
def ip(project):
    """The real IPython shell with the extension loaded in ``project``."""
    from IPython.testing.globalipapp import get_ipython, start_ipython

    shell = start_ipython() or get_ipython()  # the first call makes the singleton, later calls return None
    shell.reset(new_session=False)  # no variables from an earlier test
    shell.run_line_magic("load_ext", "mlops_jupyter")
    yield shell
    shell.run_line_magic("unload_ext", "mlops_jupyter")
    # %mlops init points this process's MLflow at the test's store, as it should in a kernel; undo it
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].tracking._tracking_service.utils._tracking_uri = None
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        os.environ.pop(var, None)
