"""``python -m <this package> [--host H] [--port P] [--workers N]``: serve the model with uvicorn.
``--check`` instead asks /health of the server on this machine (the image's HEALTHCHECK): exit status 0 or 1.

Defaults come from the environment as container platforms set it: HOST, PORT (8080, which the AWS Lambda
Web Adapter expects too) and WEB_CONCURRENCY (1). With several workers, /metrics counts all of them
through prometheus_client's multiprocess mode: its folder is PROMETHEUS_MULTIPROC_DIR, or a new
temporary one, and it is emptied on start (stale files from an earlier run would add to the counts).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def metrics_dir(workers: int) -> tuple[Path | None, bool]:
    """The emptied multiprocess metrics folder (None with one worker and none asked for), and whether
    it is ours to remove at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given and workers == 1:
        return None, False
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix=f"{__package__}-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # the workers inherit it
    return folder, not given


def healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as answer:
            return answer.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None, app_dir: str | None = None) -> None:
    env = os.environ
    ap = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=env.get("HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(env.get("PORT", "8080")))
    ap.add_argument("--workers", type=int, default=int(env.get("WEB_CONCURRENCY", "1")))
    ap.add_argument("--log-level", default=env.get("LOG_LEVEL", "info"))
    ap.add_argument("--check", action="store_true", help="ask /health on 127.0.0.1:PORT and exit")
    args = ap.parse_args(argv)
    if args.check:
        raise SystemExit(0 if healthy(args.port) else 1)
    folder, ours = metrics_dir(max(1, args.workers))
    import uvicorn

    try:
        uvicorn.run(f"{__package__}.app:app", host=args.host, port=args.port, workers=max(1, args.workers),
                    log_level=args.log_level, app_dir=app_dir, timeout_graceful_shutdown=10)
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
