"""Notebook cells as MLflow runs.

Public surface for the front doors: ``Tracker`` / ``RunOptions`` (kernel side),
``list_runs`` / ``compare_runs`` / ``get_runs`` / ``child_runs`` / ``run_models`` (reading runs back,
lazily importing mlflow).
"""

from .query import (child_runs, compare_runs, get_runs, list_runs, metric_history, run_for_record, run_models,
                    runs_tagged, runs_with_tags)
from .session import RunOptions, Tracker

__all__ = ["Tracker", "RunOptions", "list_runs", "compare_runs", "get_runs", "runs_with_tags", "child_runs",
           "run_models", "run_for_record", "runs_tagged", "metric_history"]
