"""A Debian + python3 base image for the image tests and the serving bench, made once and kept.

No Docker Hub here, so `mmdebstrap` makes the root filesystem from Debian's packages (about 40 s) and
buildah imports it. Both are kept under ~/.cache/mlops-jupyter/images (XDG_CACHE_HOME respected), in a
container storage of their own (vfs, which works in any container), keyed by what goes into the base:
a rerun of the tests finds the image and makes nothing. `storage_env()` points buildah at that storage.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"  # Debian 12: python3 is 3.11, the Python the project's models are logged on
PACKAGES = ("python3", "python3-venv", "ca-certificates")
KEY = hashlib.sha256(f"minbase {SUITE} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-jupyter" / "images"
BASE_IMAGE = f"localhost/mlops-jupyter-test-base:{SUITE}-{KEY}"


def storage_env() -> dict:
    """Environment variables that give buildah this cache's storage (written on first use)."""
    conf = CACHE / "storage.conf"
    if not conf.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{CACHE / "storage"}"\n'
                        f'runroot = "{CACHE / "run"}"\n')
    return {"CONTAINERS_STORAGE_CONF": str(conf)}


def buildah(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], env={**os.environ, **storage_env()}, capture_output=True, text=True,
                          check=check, **kwargs)


def has_image(ref: str) -> bool:
    return buildah("inspect", "--type", "image", ref, check=False).returncode == 0


def ensure_base() -> tuple[str, str]:
    """The base image's reference, and how it came to be ("cached", "imported in N s", "made in N s")."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:  # two test runs at once make it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if has_image(BASE_IMAGE):
            return BASE_IMAGE, "cached"
        start, rootfs, how = time.monotonic(), CACHE / f"{SUITE}-{KEY}.tar", "imported"
        if not rootfs.is_file():
            partial = rootfs.with_suffix(".partial.tar")
            subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial)],
                           check=True, capture_output=True)
            partial.rename(rootfs)
            how = "made"
        container = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", container, str(rootfs), "/")
            buildah("config", "--cmd", "/bin/bash", container)
            buildah("commit", "--quiet", container, BASE_IMAGE)
        finally:
            buildah("rm", container, check=False)
        return BASE_IMAGE, f"{how} in {time.monotonic() - start:.0f} s"
