"""Snapshot speed against the anchors, all timed in this run on the same disk:
- snapshot of a 1 GiB file vs `md5sum` of it (goal <= 1.3x), beside plain `dvc add` (about 2.2x);
- re-snapshot of unchanged data (goal <= 0.3 s), beside plain `dvc add` of unchanged data (about 1.3 s).
BENCH_SNAPSHOT_MB changes the file size (default 1024)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import git, make_git_project  # noqa: E402

MB = int(os.environ.get("BENCH_SNAPSHOT_MB", "1024"))


def write_random(path: Path, mb: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as fh:
        for i in range(mb):
            fh.write(block[i % 7:] + block[: i % 7])  # distinct blocks, cheap to make


def timed(fn) -> float:
    os.sync()  # earlier writes (making the test file) must not be flushed on the timed operation's clock
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    from mlops_jupyter import data

    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        ours, plain = make_git_project(Path(tmp) / "ours"), make_git_project(Path(tmp) / "plain")
        (ours / "tiny").write_text("x")
        data.snapshot("tiny", root=ours)  # DVC set up beforehand: we time the snapshot itself
        subprocess.run([*dvc, "init", "-q"], cwd=plain, check=True)
        write_random(ours / "big.bin", MB)
        shutil.copyfile(ours / "big.bin", plain / "big.bin")
        subprocess.run(["cat", str(ours / "big.bin"), str(plain / "big.bin")], stdout=subprocess.DEVNULL)  # warm
        md5sum = min(timed(lambda: subprocess.run(["md5sum", str(ours / "big.bin")], capture_output=True,
                                                  check=True)) for _ in range(2))
        snaps = []
        for i in range(3):  # three real snapshots (the data changes each time): the median
            with (ours / "big.bin").open("r+b") as fh:
                fh.seek(-8, os.SEEK_END)
                fh.write(f"{i:08d}".encode())
            snaps.append(timed(lambda: data.snapshot("big.bin", root=ours)))
        snap = statistics.median(snaps)
        again = timed(lambda: data.snapshot("big.bin", root=ours))
        add = timed(lambda: subprocess.run([*dvc, "add", "-q", "big.bin"], cwd=plain, check=True))
        re_add = timed(lambda: subprocess.run([*dvc, "add", "-q", "big.bin"], cwd=plain, check=True))
        assert git(ours, "log", "-3", "--format=%s").split().count("big.bin") == 3
    print(f"{MB} MiB file: md5sum {md5sum:.2f} s (anchor)")
    print(f"snapshot {snap:.2f} s (median of {', '.join(f'{t:.2f}' for t in snaps)}) = {snap / md5sum:.2f}x md5sum "
          f"(goal <= 1.3x): {'PASS' if snap <= 1.3 * md5sum else 'MISS'}")
    print(f"plain `dvc add` {add:.2f} s = {add / md5sum:.2f}x md5sum")
    print(f"re-snapshot of unchanged data {again:.3f} s (goal <= 0.3 s): {'PASS' if again <= 0.3 else 'MISS'}; "
          f"plain `dvc add` of unchanged data {re_add:.2f} s (ratio {again / re_add:.3f})")


if __name__ == "__main__":
    main()
