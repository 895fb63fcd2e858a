"""The cell's run as MLflow's active run, so ``mlflow.log_metric(...)`` inside a tracked cell lands in it.

The run is made by the recorder, off the cell's path, so at cell start its id is not known yet: the
cell gets a stand-in ``ActiveRun`` whose id resolves when the recorder has made the run, and a cell that
never touches mlflow never waits for it. MLflow has no public way to push such a run onto its stack of
active runs (``mlflow.start_run(run_id=...)`` needs the id now): ``_stack`` is the one place that uses
its private name, and a test fails loudly if MLflow moves it.
"""

from __future__ import annotations

_PENDING = None


def _stack() -> list:
    """MLflow's stack of active runs for this thread/context (private: see the module doc)."""
    from mlflow.tracking import fluent

    return fluent._active_run_stack.get()


def push(resolve) -> object:
    """Make a stand-in active run whose ``info``/``data`` come from ``resolve()`` (an MLflow Run, fetched
    once when first needed); returns it, for ``remove``."""
    run = _pending_class()(resolve)
    _stack().append(run)
    return run


def remove(run) -> None:
    stack = _stack()
    stack[:] = [r for r in stack if r is not run]


def _pending_class():
    global _PENDING
    if _PENDING is None:
        from mlflow.tracking.fluent import ActiveRun

        class PendingRun(ActiveRun):
            def __init__(self, resolve):  # noqa: D107 - resolved lazily, see _resolve
                self._resolver, self._run = resolve, None

            def _resolve(self):
                if self._run is None:
                    self._run = self._resolver()
                return self._run

            info = property(lambda self: self._resolve().info)
            data = property(lambda self: self._resolve().data)
            inputs = property(lambda self: self._resolve().inputs)
            outputs = property(lambda self: self._resolve().outputs)

        _PENDING = PendingRun
    return _PENDING
