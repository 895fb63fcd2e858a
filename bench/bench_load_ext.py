"""Wall time of ``%load_ext mlops_jupyter`` in a fresh process, against ``import mlflow`` (the anchor),
both timed in fresh interpreters in this run. Goal: load_ext < 150 ms."""

from __future__ import annotations

import statistics
import subprocess
import sys

RUNS = 7

LOAD_EXT = """
import time
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
t = time.perf_counter()
ip.run_line_magic("load_ext", "mlops_jupyter")
print(time.perf_counter() - t)
"""
IMPORT_MLFLOW = "import time\nt = time.perf_counter()\nimport mlflow\nprint(time.perf_counter() - t)"


def fresh(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    load = statistics.median(fresh(LOAD_EXT) for _ in range(RUNS))
    anchor = statistics.median(fresh(IMPORT_MLFLOW) for _ in range(3))
    print(f"%load_ext mlops_jupyter: {load * 1e3:.1f} ms median of {RUNS} fresh processes (goal < 150 ms): "
          f"{'PASS' if load < 0.150 else 'MISS'}")
    print(f"anchor, import mlflow: {anchor * 1e3:.0f} ms median; ratio load_ext/import mlflow = {load / anchor:.3f}")


if __name__ == "__main__":
    main()
