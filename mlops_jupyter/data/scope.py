"""Which snapshots a project holds right now: read from its .dvc files (no DVC import, no hashing),
so the recorder can stamp every tracked run with them cheaply."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

TAG_PREFIX = "mlops.data."
READ_PREFIX = "mlops.read."


def tag_key(path: str) -> str:
    """The run tag naming a snapshotted path (MLflow tag keys allow only a few characters): the version the
    project held as the run started, whether or not the run read it."""
    return TAG_PREFIX + re.sub(r"[^\w./ :-]", "_", path)


def read_key(path: str) -> str:
    """The run tag saying the run read (or took) this snapshotted path; its value is the version's md5."""
    return READ_PREFIX + re.sub(r"[^\w./ :-]", "_", path)


def read_dvc_file(text: str) -> dict | None:
    """{"md5", "size", "nfiles"} of a single-output .dvc file; None if it is not one."""
    import yaml

    try:
        outs = (yaml.safe_load(text) or {}).get("outs") or []
    except yaml.YAMLError:
        return None
    if len(outs) != 1 or not outs[0].get("md5"):
        return None
    out = outs[0]
    return {"md5": out["md5"], "size": out.get("size"), "nfiles": out.get("nfiles")}


def dvc_files(root: Path) -> list[Path]:
    """The project's .dvc files, tracked or not (but not ignored)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "--", "*.dvc"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [root / line for line in out.stdout.splitlines() if line and not line.startswith(".dvc/")]


def in_scope(root: str | Path) -> list[dict]:
    """[{"path", "md5", "size", "nfiles"}] for every snapshotted path of the project, as its .dvc
    files say now."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return []
    found = []
    for dvcfile in dvc_files(root):
        try:
            info = read_dvc_file(dvcfile.read_text())
        except OSError:
            continue
        if info:
            rel = dvcfile.relative_to(root).as_posix()[: -len(".dvc")]
            found.append({"path": rel, **info})
    return found
