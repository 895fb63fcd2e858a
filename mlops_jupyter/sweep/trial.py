"""Worker side: one trial runs the cell body with the sampled parameters as plain variables.

A body that raises is retried here (``--retries``) and then reported as a FAILED result rather than
raised, so the retries of Ray Tune (or of the sweep's own task pool) stay for lost workers and nodes.
Imported in Ray workers only.
"""

from __future__ import annotations

import importlib
import io
import linecache
import math
import os
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout

import mlops_jupyter

from .ship import FILENAME, rebind

MAX_OUTPUT_CHARS = 64 << 10  # a trial's stdout kept for its child run


class _MissingMetric(Exception):
    pass


def _where() -> dict:
    import ray

    return {"mlops_node": ray.get_runtime_context().get_node_id(),
            "mlops_gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def _namespace(job: dict, config: dict) -> dict:
    values = job["values"]  # a fresh copy per trial, from the one object the sweep put in the object store
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    for name, module in job["modules"].items():
        ns[name] = importlib.import_module(module)
    for dotted in job["submodules"]:
        importlib.import_module(dotted)
    ns.update(values)
    rebind(values, ns)
    ns.update(config)
    return ns


def _traceback(exc: BaseException, skipped: dict) -> str:
    """The user's frames only (from the cell on), plus a hint when a notebook global could not travel."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != FILENAME:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    name = getattr(exc, "name", None)
    if isinstance(exc, NameError) and name in skipped:
        text += (f"\n`{name}` exists in the notebook but could not be sent to Ray workers ({skipped[name]}); "
                 "create it inside the sweep cell instead.\n")
    return text


def run(config: dict, job: dict) -> None:
    """The Ray Tune function trainable: body, then the --metric variable as the trial's result."""
    from ray import tune

    attempts(config, job, tune.report)


def run_task(config: dict, job: dict) -> list:
    """A trial as a plain Ray task (a sweep without a scheduler, see ``runner``): its results, in order."""
    results: list = []
    attempts(config, job, results.append)
    return results


def attempts(config: dict, job: dict, report) -> None:
    """The body, up to 1 + --retries times, then the --metric variable as the trial's last result, each
    result handed to ``report``."""
    metric, where, started = job["metric"], _where(), time.time()
    linecache.cache[FILENAME] = (len(job["body"]), None, job["body"].splitlines(True), FILENAME)
    code = compile(job["body"], FILENAME, "exec")
    last: dict = {}

    def reporter(metrics: dict) -> None:
        if metric not in metrics:
            raise ValueError(f"mlops_jupyter.report() inside this sweep must include the sweep's metric "
                             f"{metric!r} (e.g. report({metric}={metric}, ...)): the scheduler compares trials on it.")
        clean = {k: float(v) for k, v in metrics.items()}
        last.update(clean)
        report({**clean, **where})

    error, out = "", io.StringIO()
    for attempt in range(1, job["retries"] + 2):
        ns, out = None, io.StringIO()
        mlops_jupyter._reporter = reporter
        try:
            ns = _namespace(job, config)
            with redirect_stdout(out), redirect_stderr(out):
                exec(code, ns)
            if metric in ns:
                value = ns[metric]
            elif metric in last:
                value = last[metric]
            else:
                raise _MissingMetric(f"the cell did not assign the sweep's metric variable `{metric}`; "
                                     f"end the cell with e.g. `{metric} = model.score(X_test, y_test)`.")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise _MissingMetric(f"the sweep's metric variable `{metric}` is a {type(value).__name__}, "
                                     "not a number") from None
            extra = {k: v for k, v in last.items() if k != metric}
            report({**extra, metric: value, **where, "mlops_status": "FINISHED", "mlops_attempts": attempt,
                    "mlops_output": out.getvalue()[-MAX_OUTPUT_CHARS:], "mlops_ran": (started, time.time())})
            return
        except _MissingMetric as exc:
            error = f"{exc}\n"
            break  # the same body would miss it again
        except Exception as exc:  # noqa: BLE001 - the user's code: recorded, retried, never fatal to the sweep
            error = _traceback(exc, job["skipped"])
        finally:
            mlops_jupyter._reporter = None
    worst = -math.inf if job["mode"] == "max" else math.inf  # so no scheduler or searcher prefers it
    report({metric: worst, **where, "mlops_status": "FAILED", "mlops_attempts": attempt, "mlops_error": error,
            "mlops_output": out.getvalue()[-MAX_OUTPUT_CHARS:], "mlops_ran": (started, time.time())})
