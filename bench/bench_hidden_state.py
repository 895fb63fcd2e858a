"""What recording the execution order costs a tracked cell (goal < 0.2 ms): noting the cell, the order as the
run records it (the latest 200 executions) and its JSON in the journal record, in a session that has run 300
cells. The anchor, timed in the same run: ``ast.parse`` of the same cell, which IPython pays for every cell
anyway. The dependency check runs in a thread while the cell runs, off its path."""

from __future__ import annotations

import ast
import statistics
import time

from mlops_jupyter.tracking.journal import RawJSON, dumps
from mlops_jupyter.tracking.order import History

CELL = ("from sklearn.ensemble import RandomForestClassifier\nn_estimators = 100\nmax_depth = 4\n"
        "model = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=0)\n"
        "model.fit(X_train, y_train)\naccuracy = model.score(X_test, y_test)\nprint(accuracy)\n")
LOOPS = 2000


def per_call(fn) -> float:
    samples = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(LOOPS):
            fn()
        samples.append((time.perf_counter() - t) / LOOPS)
    return statistics.median(samples)


def main() -> None:
    history = History()
    for i in range(300):
        history.note(i, f"cell-{i % 40}", CELL.replace("100", str(i)))
    count = iter(range(300, 10**9))

    def record():
        history.note(next(count), "cell-7", CELL)
        dumps({"op": "start", "execution_order": RawJSON(history.order_json())})  # as the cell's record has it

    cost, anchor = per_call(record), per_call(lambda: ast.parse(CELL))
    print(f"recording the execution order: {cost * 1e3:.3f} ms per tracked cell (goal < 0.2 ms): "
          f"{'PASS' if cost < 0.0002 else 'MISS'}")
    print(f"anchor, ast.parse of the same cell: {anchor * 1e3:.3f} ms; ratio = {cost / anchor:.2f}")


if __name__ == "__main__":
    main()
