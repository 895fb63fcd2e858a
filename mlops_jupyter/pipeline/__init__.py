"""Tagged notebook -> parameterized, incremental pipeline, run with papermill.

Stages, one module each: ``tags`` (cells -> steps), ``analysis`` (variable hand-off between
steps), ``models`` (model:NAME -> MLflow model + serving package), ``emit`` (step notebooks,
params.yaml, dvc.yaml, README, CI workflow), ``execute`` (incremental, parallel execution),
``kernels`` / ``forkserver`` (step kernels forked from a template that has the imports loaded),
``track`` (the MLflow process), ``state`` (hashes behind skip / status), ``serializers`` (the
runtime save/load the step notebooks call), ``source`` (the notebook behind an export: is the export
outdated, checks that write nothing). Importing this package is cheap: papermill and
mlflow are imported only when a step actually executes.
"""

from __future__ import annotations

from pathlib import Path

from .picture import FILE as PICTURE
from .source import check, check_cells, default_folder, notebook_of, outdated


def export(notebook, out, target="local", image=None):
    """Write the pipeline for a tagged ``notebook`` into folder ``out``; returns the Pipeline. ``target="kfp"``
    also compiles it for Kubeflow Pipelines v2 (``out/kfp-pipeline.yaml``, its steps in ``image``)."""
    from .emit import export_notebook

    if target == "kfp" and not (image or "").strip():
        from ..errors import InvalidInput

        raise InvalidInput("export --target kfp needs the image its steps run in, and none was given; name it, e.g. "
                           "--image registry.example.com/team/project:1.0 (an image holding the project at its "
                           "working directory and mlops-jupyter[pipeline]).", what="image")
    pipe = export_notebook(notebook, out)
    if target == "kfp":
        from .. import config
        from .kubeflow import compile_pipeline

        pipe.kfp = compile_pipeline(pipe, image, config.find_project_root(Path(notebook).resolve().parent))
    return pipe


def run(folder, params=None, from_step=None, force=False, echo=print, wait_records=True, on_step=None,
        address=None, storage=None, max_retries=2, kept_driver=False):
    """Run an exported pipeline incrementally; returns a RunResult. ``wait_records=False``: return once the
    steps are done, leaving the last MLflow records to the recorder when the store has kept up (a process
    about to exit; `mlops runs` waits for them). ``on_step(name, status, result)``: each step as it starts
    executing and as it ends. ``address`` (else RAY_ADDRESS, else [tool.mlops] ray-address): each step a Ray
    task on that cluster, handing off through ``storage`` (default: the pipeline folder), run again up to
    ``max_retries`` times when its node dies. ``kept_driver`` (a process about to exit: the CLI): on a cluster,
    through the driver that MLOPS_RAY_DRIVER_S keeps connected (``driver``), where it is set."""
    if kept_driver:
        from .driver import through_driver

        result = through_driver(folder, params=params, from_step=from_step, force=force, wait_records=wait_records,
                                address=address, storage=storage, max_retries=max_retries, echo=echo)
        if result is not None:
            return result
    from .execute import run_pipeline

    return run_pipeline(folder, params=params, from_step=from_step, force=force, echo=echo,
                        wait_records=wait_records, on_step=on_step, address=address, storage=storage,
                        max_retries=max_retries)


def fitted(folder, result) -> list[tuple[str, str, str]]:
    """(step, model name, the step's MLflow run) of each model:NAME a pipeline run ``result`` fitted anew (its
    step ran)."""
    from .. import config, tracking

    pipe = load(folder)
    ran = {s.name for s in result.steps if s.status == "ran"}
    settings = config.resolve((Path(pipe.folder) / pipe.root).resolve())
    runs = {}
    if result.mlflow_run and ran:
        (parent,) = tracking.get_runs(settings, [result.mlflow_run])
        runs = {c["tags"].get("mlops.step", c["run_name"]): c["run_id"]
                for c in tracking.child_runs(settings, result.mlflow_run, parent.info.experiment_id)}
    return [(s["name"], m, runs[s["name"]]) for s in pipe.steps for m in s.get("models", [])
            if s["name"] in ran and s["name"] in runs]


def status(folder):
    """[(step, state, reason)] with state one of fresh / stale / failed."""
    from .state import pipeline_status

    return pipeline_status(folder)


def load(folder):
    """The Pipeline definition exported into ``folder``; PipelineError when it holds none."""
    from .emit import load_pipeline

    return load_pipeline(folder)


def tracked_inputs(folder) -> list[Path]:
    """The DVC-tracked files and folders the exported pipeline in ``folder`` reads (absolute paths)."""
    from .. import config
    from .emit import load_pipeline, tracked_inputs as inputs

    pipe = load_pipeline(folder)
    src_dir = (Path(pipe.folder) / pipe.root).resolve()
    return inputs(pipe, src_dir, config.find_project_root(src_dir))


def running(folder) -> bool:
    """Whether an ``mlops pipeline run`` holds ``folder``'s run lock right now (from any process)."""
    from .execute import _lock
    from .state import STATE_DIR
    from .tags import PipelineError

    folder = Path(folder).resolve()
    if not (folder / STATE_DIR).is_dir():
        return False  # never run: and no lock file is made just to ask
    try:
        _lock(folder).close()
    except PipelineError:
        return True
    return False


__all__ = ["PICTURE", "export", "run", "status", "load", "running", "check", "check_cells", "outdated", "notebook_of",
           "default_folder", "tracked_inputs"]
