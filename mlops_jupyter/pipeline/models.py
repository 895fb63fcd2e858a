"""``model:NAME``: a step's fitted model, logged to MLflow in the step's child run and turned into a FastAPI
serving package at ``<pipeline>/serving/NAME``.

NAME is the variable that holds the model when its step ends (a scikit-learn estimator or pipeline, or a
scikit-learn compatible one such as XGBClassifier). Serving needs a signature, so the pipeline makes one:
export finds by AST the data the step fits the model on (``NAME.fit(X, y)`` or ``NAME = ....fit(X, y)`` ->
``X``); when the step ends, its save cell hands the model and the first rows of that data (the input
example, ``EXAMPLE_ROWS`` rows: the training data itself never leaves the step) to ``artifacts/<step>/``;
then MLflow logs the model with that input example and the signature inferred from it and the model's
predictions on it, and ``serving.generate_package`` writes the package. Under ``mlops pipeline run`` the
logging happens in the pipeline's MLflow process (``track``); under ``dvc repro`` the stage runs
``python -m mlops_jupyter.pipeline.models . STEP`` after papermill.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ..tracking.models import fit_expression
from . import analysis
from .tags import Parsed, PipelineError

SERVING_DIR = "serving"


# ---- export: which data each tagged model is fit on ---------------------------------------------
def fit_data(cells, name: str) -> str | None:
    """Source of the data the last fit of ``name`` in ``cells`` is given (see tracking.models.fit_expression)."""
    found = None
    for cell in cells:
        found = fit_expression(analysis.python_source(cell.source), name) or found
    return found


def examples(parsed: Parsed) -> dict:
    """{step: {model name: source of the data it is fit on}} for the notebook's model:NAME tags; raises
    PipelineError naming the tagged cell when a step never assigns or never fits its model."""
    out = {}
    producers = {s.name: analysis.usage(s.cells).produces for s in parsed.steps}
    for step in parsed.steps:
        out[step.name] = {}
        for name in step.models:
            cell = step.model_cells[name]
            if name not in producers[step.name]:
                others = [s for s, made in producers.items() if name in made]
                hint = f" (step {others[-1]!r} does: tag a cell of that step)" if others else ""
                raise PipelineError(f"{cell.where} has the tag model:{name}, but step {step.name!r} never assigns "
                                    f"{name}{hint}; model:NAME names the variable that holds the fitted model when "
                                    "its step ends.", **cell.at)
            data = fit_data(step.cells, name)
            if data is None:
                raise PipelineError(f"{cell.where} has the tag model:{name}, but step {step.name!r} never fits it "
                                    f"(`{name}.fit(X, y)` or `{name} = ....fit(X, y)`); the serving package's input "
                                    f"example and signature come from the first rows of the data the model is fit "
                                    f"on, so fit {name} in this step.", **cell.at)
            out[step.name][name] = data
    return out


# ---- after the step: an MLflow model folder + the serving package ----------------------------------
class ModelError(PipelineError):
    """A tagged model that cannot be logged or served."""


def build(folder: Path, step: str, name: str, root: Path, dest: Path, run_id: str | None = None) -> Path:
    """Model ``name`` that step ``step`` handed to ``folder``/artifacts, as an MLflow model folder at ``dest``
    (input example and inferred signature included; see tracking.models.save); raises ModelError."""
    from ..errors import InvalidInput
    from ..tracking import models
    from . import serializers

    art = str(folder / "artifacts" / step)
    if str(root) not in sys.path:  # classes from modules beside the notebook load as they did in the kernel
        sys.path.insert(0, str(root))
    try:
        model = serializers.load(art, name, step, step)
        example = serializers.load(art, serializers.example_key(name), step, step)
    except Exception as exc:  # noqa: BLE001 - e.g. a class defined in the notebook itself
        raise ModelError(f"model:{name} of step {step!r} cannot be loaded outside the step's kernel "
                         f"({type(exc).__name__}: {exc}); a model whose class is defined in the notebook cannot be "
                         "served: define the class in a module beside the notebook and import it.") from None
    try:
        saved = models.save(model, example, dest, name, run_id=run_id, label=f"model:{name} of step {step!r}")
    except InvalidInput as exc:
        raise ModelError(str(exc)) from None
    _reference(art, model, name, step, dest, run_id)
    return saved


def _reference(art: str, model, name: str, step: str, dest: Path, run_id: str | None) -> None:
    """The model's reference profile (monitor) beside its folder (monitor.kept_at), from the rows
    its step handed over; a step saved before references existed has none, and the model is logged all the same."""
    from .. import monitor
    from . import serializers

    try:
        rows = serializers.load(art, serializers.reference_key(name), step, step)
    except Exception:  # noqa: BLE001 - not handed over: no reference, and nothing else changes
        return
    monitor.write(monitor.build(model, rows, {"run_id": run_id, "name": name}), monitor.kept_at(dest.parent, name))


def package(folder: Path, name: str, model_dir: Path, settings, source: str | None = None) -> Path:
    """(Re)write the serving package of the model folder ``model_dir`` at ``folder``/serving/NAME (naming
    ``source`` as the model's origin); the old one is replaced only once the new one is complete."""
    from ..errors import MlopsError
    from ..serving import generate_package

    base = folder / SERVING_DIR
    dest, new, old = base / name, base / f".{name}.new", base / f".{name}.old"
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    from ..monitor import kept_at

    ref = kept_at(Path(model_dir).parent, name)
    try:
        generate_package(str(model_dir), new, name=name, settings=settings, source=source,
                         reference=json.loads(ref.read_text()) if ref.is_file() else None)
    except MlopsError as exc:
        shutil.rmtree(new, ignore_errors=True)
        raise ModelError(f"the serving package for model:{name} could not be generated: {exc}") from None
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def build_and_package(folder: Path, step: str, names: list, root: Path, settings, blobs: Path,
                      run_id: str | None = None) -> dict:
    """{name: {"dir": its MLflow model folder under ``blobs``, "package": its serving package}} for step
    ``step``'s tagged models (logged to run ``run_id``, when its id is known yet); raises ModelError."""
    out = {}
    for name in names:
        model_dir = build(folder, step, name, root, blobs / step / name, run_id)
        pkg = package(folder, name, model_dir, settings, f"runs:/{run_id}/{name}" if run_id else None)
        out[name] = {"dir": str(model_dir), "package": str(pkg)}
    return out


def main(argv=None) -> int:
    """``python -m mlops_jupyter.pipeline.models FOLDER STEP``: the model part of a ``dvc repro`` stage."""
    from .. import config
    from ..errors import MlopsError
    from ..tracking.records import Recording
    from .emit import load_pipeline

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m mlops_jupyter.pipeline.models PIPELINE_FOLDER STEP", file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(args[0])
        spec = pipe.step(args[1])
        root = (pipe.folder / pipe.root).resolve()
        settings = config.resolve(root)
        rec = Recording(settings, settings.experiment or f"pipeline-{pipe.name}")
        key = rec.start_run(f"{spec['name']} (dvc repro)", tags={"mlops.kind": "pipeline-step",
                                                                 "mlops.pipeline": pipe.name, "mlops.step": spec["name"]})
        try:  # the package names its run when the store has made it by now
            done = build_and_package(pipe.folder, spec["name"], spec.get("models", []), root, settings,
                                     rec.link.blobs, rec.run_id(key, timeout=30))
        except BaseException:
            rec.end_run(key, "FAILED")
            rec.close()
            raise
        for name, where in done.items():
            rec.model(key, name, Path(where["dir"]))
        rec.end_run(key, "FINISHED")
        outcome = rec.close()
    except MlopsError as exc:
        print(f"mlops pipeline: {exc}", file=sys.stderr)
        return 1
    run_id = outcome.run_ids.get(key)
    for name, where in done.items():
        uri = f"runs:/{run_id}/{name}" if run_id else "its MLflow run (not written yet)"
        print(f"model {name}: {uri} · serving package {where['package']}")
    note = outcome.note(f"the run of step {spec['name']}")
    if note:
        print(f"mlops: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
