"""Snapshot speed against the anchors, all timed in this run on the same disk:
- snapshot of a 1 GiB file vs the floor max(`md5sum` of it, `cp` of it into the DVC cache's folder made durable
  with `sync FILE`) (goal <= 1.1x): a snapshot must hash the data and get a copy of it into the cache, so the
  slower of the two is the least it can take. `cp` makes a reflink where the filesystem can, as the snapshot
  does, so there the floor is the hash alone. Three rounds, each timing both anchors right before a real
  snapshot (the data changes each time): the median of the per-round ratios, so load that drifts on a shared
  machine moves anchor and snapshot alike. DVC does not fsync its cache, so the snapshot plus a sync of what it
  left to write is printed too. Beside plain `dvc add`;
- re-snapshot of unchanged data (goal <= 0.3 s), beside plain `dvc add` of unchanged data (about 1.3 s).
BENCH_SNAPSHOT_MB changes the file size (default 1024); BENCH_DIR the folder (the filesystem) it runs in, e.g. an
XFS or Btrfs mount to see reflinks."""

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
        tmp_fs = subprocess.run(["stat", "-f", "-c", "%T", tmp], capture_output=True, text=True).stdout.strip()
        ours, plain = make_git_project(Path(tmp) / "ours"), make_git_project(Path(tmp) / "plain")
        (ours / "tiny").write_text("x")
        data.snapshot("tiny", root=ours)  # DVC set up beforehand: we time the snapshot itself
        subprocess.run([*dvc, "init", "-q"], cwd=plain, check=True)
        write_random(ours / "big.bin", MB)
        shutil.copyfile(ours / "big.bin", plain / "big.bin")
        subprocess.run(["cat", str(ours / "big.bin"), str(plain / "big.bin")], stdout=subprocess.DEVNULL)  # warm
        copy = ours / ".dvc" / "cache" / "bench-cp.tmp"  # the cache's filesystem, where the snapshot copies to

        def md5sum():
            subprocess.run(["md5sum", str(ours / "big.bin")], capture_output=True, check=True)

        def cp():
            subprocess.run(f"cp --reflink=auto big.bin {copy} && sync {copy}", shell=True, cwd=ours, check=True)

        rounds = []
        for i in range(3):  # anchors and a real snapshot (the data changes each time) side by side: a machine
            with (ours / "big.bin").open("r+b") as fh:  # whose load drifts moves all three alike
                fh.seek(-8, os.SEEK_END)
                fh.write(f"{i:08d}".encode())
            hashed, copied = timed(md5sum), timed(cp)
            copy.unlink()
            snap = timed(lambda: data.snapshot("big.bin", root=ours))
            t = time.perf_counter()
            os.sync()  # what the snapshot left for the disk to write (DVC does not fsync its cache)
            rounds.append((hashed, copied, snap, time.perf_counter() - t))
        md5s, cps, snaps = ([r[k] for r in rounds] for k in range(3))
        ratio = statistics.median(r[2] / max(r[0], r[1]) for r in rounds)
        durable = statistics.median((r[2] + r[3]) / max(r[0], r[1]) for r in rounds)
        md5sum, cp, snap = statistics.median(md5s), statistics.median(cps), statistics.median(snaps)
        floor = max(md5sum, cp)
        again = timed(lambda: data.snapshot("big.bin", root=ours))
        add = timed(lambda: subprocess.run([*dvc, "add", "-q", "big.bin"], cwd=plain, check=True))
        re_add = timed(lambda: subprocess.run([*dvc, "add", "-q", "big.bin"], cwd=plain, check=True))
        assert git(ours, "log", "-3", "--format=%s").split().count("big.bin") == 3
    print(f"{MB} MiB file in {tmp_fs}, three rounds: md5sum {' '.join(f'{t:.2f}' for t in md5s)} s, durable cp into the "
          f"DVC cache's folder {' '.join(f'{t:.2f}' for t in cps)} s (anchors), snapshot {' '.join(f'{t:.2f}' for t in snaps)} s")
    print(f"snapshot / max(md5sum, cp) of the same round, median {ratio:.2f}x (goal <= 1.1x): "
          f"{'PASS' if ratio <= 1.1 else 'MISS'}; medians: snapshot {snap:.2f} s, md5sum {md5sum:.2f} s, cp {cp:.2f} s")
    print(f"snapshot then sync of what it wrote: median {durable:.2f}x max(md5sum, cp)")
    print(f"plain `dvc add` {add:.2f} s = {add / floor:.2f}x max(md5sum, cp)")
    print(f"re-snapshot of unchanged data {again:.3f} s (goal <= 0.3 s): {'PASS' if again <= 0.3 else 'MISS'}; "
          f"plain `dvc add` of unchanged data {re_add:.2f} s (ratio {again / re_add:.3f})")


if __name__ == "__main__":
    main()
