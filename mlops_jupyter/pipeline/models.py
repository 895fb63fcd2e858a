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

import ast
import shutil
import sys
from pathlib import Path

from . import analysis
from .tags import Parsed, PipelineError

SERVING_DIR = "serving"
FIT_METHODS = ("fit", "partial_fit", "fit_transform", "fit_predict")


# ---- export: which data each tagged model is fit on ---------------------------------------------
def _statements(node):
    """The nodes of ``node`` outside function, lambda and class bodies (their names are not the step's)."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            yield child
            yield from _statements(child)


def _fit_arg(call) -> ast.AST | None:
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in FIT_METHODS:
        if call.args and not isinstance(call.args[0], ast.Starred):
            return call.args[0]
        return next((k.value for k in call.keywords if k.arg in ("X", "x")), None)
    return None


def fit_data(cells, name: str) -> str | None:
    """Source of the data the last fit of ``name`` in ``cells`` is given: ``name.fit(DATA, ...)``, or
    ``name = <anything>.fit(DATA, ...)`` (a fitted pipeline assigned in one go)."""
    found = None
    for cell in cells:
        tree = ast.parse(analysis.python_source(cell.source))
        hits = []
        for node in _statements(tree):
            arg = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == name:
                arg = _fit_arg(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    arg = _fit_arg(node.value)
            if arg is not None:
                hits.append((node.lineno, node.col_offset, ast.unparse(arg)))
        if hits:
            found = max(hits)[2]
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


# ---- after the step: MLflow + the serving package --------------------------------------------------
class ModelError(PipelineError):
    """A tagged model that cannot be logged or served."""


def _trusted_types(model) -> tuple[str, list]:
    """skops with the model's own types trusted (it is the user's model, just trained), or cloudpickle
    for a model skops cannot write."""
    try:
        import skops.io

        return "skops", sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    except Exception:  # noqa: BLE001 - e.g. a type skops has no serializer for
        return "cloudpickle", []


# import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "imblearn": "imbalanced-learn", "skops": "skops"}


def _requirements(model, fmt: str) -> list:
    """Pinned requirements of the model (scikit-learn and the packages of the estimators in it), so MLflow
    skips its slow requirement inference."""
    from importlib import metadata

    modules = ["sklearn"] + (["cloudpickle"] if fmt == "cloudpickle" else [])
    params = model.get_params(deep=True) if hasattr(model, "get_params") else {}
    for value in [model, *params.values()]:
        mod = type(value).__module__.split(".")[0]
        if mod not in modules and mod not in sys.builtin_module_names and mod not in sys.stdlib_module_names:
            modules.append(mod)
    out = []
    for mod in modules:
        dist = DISTRIBUTIONS.get(mod, mod)
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # a module beside the notebook, or one of a differently named dist
            pass
    return out


def warm_up() -> None:
    """Import what logging a model needs (and fill MLflow's module -> package map, which its requirement check
    builds on first use: about 1.5 s), ahead of the first model."""
    import mlflow.pyfunc  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401
    from mlflow.models import infer_signature  # noqa: F401

    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_packages_to_modules_map()
    except Exception:  # noqa: BLE001 - a private helper: only a head start
        pass


def log_model(folder: Path, step: str, name: str, run_id: str, root: Path) -> str:
    """Log model ``name`` that step ``step`` saved into ``folder``/artifacts to MLflow run ``run_id`` (with
    its input example and inferred signature); returns the model's URI. Uses the process's tracking URI."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

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
    import sklearn.base

    if not isinstance(model, sklearn.base.BaseEstimator):
        t = type(model)
        raise ModelError(f"model:{name} of step {step!r} is a {t.__module__}.{t.__qualname__}, which the pipeline "
                         "cannot log: it logs scikit-learn estimators and pipelines (and scikit-learn compatible "
                         "ones, e.g. XGBClassifier). Log other models with their MLflow flavor and serve them with "
                         "`mlops serve generate MODEL_URI`.")
    try:
        predictions = model.predict(example)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"model:{name} of step {step!r} fails to predict the first rows of the data it was fit on "
                         f"({type(exc).__name__}: {str(exc)[:300]}); it needs them for its signature.") from None
    fmt, trusted = _trusted_types(model)
    try:
        info = mlflow.sklearn.log_model(model, name=name, run_id=run_id, input_example=example,
                                        signature=infer_signature(example, predictions), serialization_format=fmt,
                                        skops_trusted_types=trusted or None, pip_requirements=_requirements(model, fmt))
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raised, one clear line
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        raise ModelError(f"model:{name} of step {step!r} could not be logged to MLflow ({type(exc).__name__}: "
                         f"{first[:300]}).") from None
    return info.model_uri


def package(folder: Path, name: str, model_uri: str, settings) -> Path:
    """(Re)write the serving package of ``model_uri`` at ``folder``/serving/NAME; the old one is replaced
    only once the new one is complete."""
    from ..errors import MlopsError
    from ..serving import generate_package

    base = folder / SERVING_DIR
    dest, new, old = base / name, base / f".{name}.new", base / f".{name}.old"
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        generate_package(model_uri, new, name=name, settings=settings)
    except MlopsError as exc:
        shutil.rmtree(new, ignore_errors=True)
        raise ModelError(f"the serving package for model:{name} could not be generated: {exc}") from None
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def experiment(client, settings, pipeline: str) -> str:
    """The id of the pipeline's MLflow experiment (made if new), also made MLflow's current one: model logging
    goes through MLflow's fluent API, which would otherwise put the model's files under the default experiment."""
    import mlflow

    name = settings.experiment or f"pipeline-{pipeline}"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=settings.artifact_location)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_and_package(folder: Path, step: str, names: list, run_id: str, root: Path, settings) -> dict:
    """{name: {"uri": model URI, "package": path}} for step ``step``'s tagged models; raises ModelError."""
    out = {}
    for name in names:
        uri = log_model(folder, step, name, run_id, root)
        out[name] = {"uri": uri, "package": str(package(folder, name, uri, settings))}
    return out


def main(argv=None) -> int:
    """``python -m mlops_jupyter.pipeline.models FOLDER STEP``: the model part of a ``dvc repro`` stage."""
    import time

    from .. import config
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
        if settings.is_local_sqlite:
            config.ensure_state_dir(settings.project_root)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=settings.tracking_uri)
        exp_id = experiment(client, settings, pipe.name)
        run = client.create_run(exp_id, start_time=int(time.time() * 1000), run_name=f"{spec['name']} (dvc repro)",
                                tags={"mlops.kind": "pipeline-step", "mlops.pipeline": pipe.name,
                                      "mlops.step": spec["name"]})
        try:
            done = log_and_package(pipe.folder, spec["name"], spec.get("models", []), run.info.run_id, root, settings)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")
    except PipelineError as exc:
        print(f"mlops pipeline: {exc}", file=sys.stderr)
        return 1
    for name, where in done.items():
        print(f"model {name}: {where['uri']} · serving package {where['package']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
