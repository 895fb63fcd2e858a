"""``mlops serve run DIR``: start a generated serving package with uvicorn."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

from ..errors import Conflict, NotFound


def app_of(folder: str | Path) -> str:
    """The ``module.app:app`` import string of the generated package in ``folder``."""
    folder = Path(folder)
    pyproject = folder / "pyproject.toml"
    try:
        with pyproject.open("rb") as fh:
            app = tomllib.load(fh).get("tool", {}).get("mlops-serving", {}).get("app")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        app, why = None, str(exc)
    else:
        why = "it has no [tool.mlops-serving] app entry"
    if not app:
        raise NotFound(f"{folder} is not a generated serving package ({pyproject}: {why}).",
                       what="serving package", path=str(folder))
    return app


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the package in ``folder`` until interrupted (blocks)."""
    folder = Path(folder).resolve()
    app = app_of(folder)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:  # uvicorn would only log a bind failure and exit 1; say it plainly instead
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as exc:
            raise Conflict(f"cannot listen on {host}:{port} ({exc.strerror}).", what="address", host=host,
                           port=port) from None
    import uvicorn

    uvicorn.run(app, host=host, port=port, workers=workers, app_dir=str(folder))
