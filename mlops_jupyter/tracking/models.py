"""A fitted model as an MLflow model folder, ready for the recorder to log (the one writer).

``save`` writes what ``mlflow.sklearn.log_model`` would log, without touching the store: the model
(skops with the model's own types trusted, or cloudpickle where skops cannot write it), an input example
(the first rows of the data it was fit on), the signature inferred from them and the model's predictions,
and pinned requirements (so MLflow skips its slow requirement inference). The recorder then makes it a
logged model of the run (``op_model``), stamping the MLmodel file with the run and model ids as
``log_model`` does. Used by ``model:NAME`` pipeline steps and by ``%%mlops run --model``.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

from ..errors import InvalidInput

EXAMPLE_ROWS = 5  # rows of the training data kept as the input example (the data itself stays put)
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "imblearn": "imbalanced-learn", "skops": "skops"}


FIT_METHODS = ("fit", "partial_fit", "fit_transform", "fit_predict")


def _statements(node):
    """The nodes of ``node`` outside function, lambda and class bodies (their names are not the cell's)."""
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


def fit_expression(source: str, name: str) -> str | None:
    """Source of the data the last fit of ``name`` in Python ``source`` is given: ``name.fit(DATA, ...)``, or
    ``name = <anything>.fit(DATA, ...)`` (a fitted pipeline assigned in one go); None when there is none."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
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
    return max(hits)[2] if hits else None


def _serialization(model) -> tuple[str, list]:
    """skops with the model's own types trusted (it is the user's model, just trained), or cloudpickle
    for a model skops cannot write."""
    try:
        import skops.io

        return "skops", sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    except Exception:  # noqa: BLE001 - e.g. a type skops has no serializer for
        return "cloudpickle", []


def requirements(model, fmt: str) -> list:
    """Pinned requirements of the model: scikit-learn and the packages of the estimators in it."""
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
    """Import what saving a model needs (and fill MLflow's module -> package map, which its requirement
    check builds on first use: about 1.5 s), ahead of the first model."""
    import mlflow.pyfunc  # noqa: F401
    import mlflow.sklearn  # noqa: F401
    import skops.io  # noqa: F401
    from mlflow.models import infer_signature  # noqa: F401

    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_packages_to_modules_map()
    except Exception:  # noqa: BLE001 - a private helper: only a head start
        pass


def example_frame(data, model, name: str = "model"):
    """The first EXAMPLE_ROWS rows of the data ``model`` was fit on, as a DataFrame with string column
    names (an array's columns take the model's ``feature_names_in_``, else x0, x1, ...): its input example."""
    return _frame(data, model, name, lambda n: slice(0, EXAMPLE_ROWS))


def reference_frame(data, model, name: str = "model"):
    """Up to REFERENCE_ROWS random rows of the data ``model`` was fit on, framed as ``example_frame`` frames
    them: what its reference profile (monitor) is built from."""
    from ..monitor import REFERENCE_ROWS

    def rows(n):
        if n <= REFERENCE_ROWS:
            return slice(None)
        import numpy as np

        return np.sort(np.random.default_rng(0).choice(n, REFERENCE_ROWS, replace=False))
    return _frame(data, model, name, rows)


def _frame(data, model, name: str, pick):
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        frame = data.iloc[pick(len(data))].reset_index(drop=True)
    else:
        import numpy as np

        try:
            rows = data[pick(len(data))]
        except TypeError:
            raise InvalidInput(f"model {name!r} is fit on a {type(data).__name__}, which has no rows to take an input "
                               "example from; fit it on a DataFrame or an array.", model=name) from None
        rows = np.asarray(rows.toarray() if hasattr(rows, "toarray") else rows)  # scipy sparse -> dense
        if rows.ndim != 2:
            raise InvalidInput(f"model {name!r} is fit on data of shape {np.shape(rows)}; a served model takes rows "
                               "of columns (a 2-D array or a DataFrame).", model=name)
        names = list(getattr(model, "feature_names_in_", [])) or [f"x{i}" for i in range(rows.shape[1])]
        frame = pd.DataFrame(rows, columns=names)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def save(model, example, path: Path, name: str = "model", run_id: str | None = None, label: str = "") -> Path:
    """Write ``model`` as an MLflow model folder at ``path``, with ``example`` (rows of its training data) as
    input example and the signature inferred from it, naming run ``run_id`` when known; raises InvalidInput
    naming the model (as ``label`` says, default "model NAME") when it cannot."""
    label = label or f"model {name!r}"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        import sklearn.base
        from mlflow.models import Model, infer_signature

    if not isinstance(model, sklearn.base.BaseEstimator):
        t = type(model)
        raise InvalidInput(f"{label} is a {t.__module__}.{t.__qualname__}, which cannot be logged this way: models are "
                           "logged as scikit-learn estimators and pipelines (and scikit-learn compatible ones, e.g. "
                           "XGBClassifier). Log other models with their own MLflow flavor.", model=name)
    try:
        predictions = model.predict(example)
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{label} fails to predict the first rows of the data it was fit on "
                           f"({type(exc).__name__}: {str(exc)[:300]}); it needs them for its signature.",
                           model=name) from None
    fmt, trusted = _serialization(model)
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.sklearn.save_model(model, str(path), input_example=example,
                                      signature=infer_signature(example, predictions), serialization_format=fmt,
                                      skops_trusted_types=trusted or None, pip_requirements=requirements(model, fmt),
                                      mlflow_model=Model(run_id=run_id))
    except Exception as exc:  # noqa: BLE001 - whatever MLflow raised, one clear line
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        raise InvalidInput(f"{label} could not be saved as an MLflow model ({type(exc).__name__}: "
                           f"{first[:300]}).", model=name) from None
    for pycache in path.rglob("__pycache__"):  # save_model loads the model back to check it
        shutil.rmtree(pycache, ignore_errors=True)
    return path


def stage(model, example, folder: Path, reference=None) -> Path:
    """Keep ``model`` and its input example (and the rows its reference profile is built from) as they are now,
    in ``folder`` (cloudpickle: a class defined in a notebook is kept by value); ``save_staged`` makes the MLflow
    model folder and the reference from them later, elsewhere."""
    import cloudpickle

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kept = {"model.pkl": model, "example.pkl": example, **({"reference.pkl": reference} if reference is not None
                                                             else {})}
    for file, value in kept.items():
        with open(folder / file, "wb") as fh:
            cloudpickle.dump(value, fh)
    return folder


def save_staged(folder: Path, name: str, run_id: str | None = None) -> Path:
    """The MLflow model folder (``folder``/mlflow-model) of a model kept by ``stage``; made once."""
    import pickle

    out = Path(folder) / "mlflow-model"
    if (out / "MLmodel").is_file():
        return out
    with open(Path(folder) / "model.pkl", "rb") as fh:
        model = pickle.load(fh)  # noqa: S301 - the user's own model, kept a moment ago by their kernel
    with open(Path(folder) / "example.pkl", "rb") as fh:
        example = pickle.load(fh)  # noqa: S301
    tmp = Path(folder) / "mlflow-model.tmp"
    save(model, example, tmp, name, run_id=run_id)
    tmp.rename(out)
    return out


def staged_reference(folder: Path, name: str, run_id: str) -> Path | None:
    """The reference profile (monitor) of a model kept by ``stage`` with its training rows, written once where
    monitor.kept_at says; None when none was kept."""
    import pickle

    from .. import monitor

    out = monitor.kept_at(folder, name)
    rows = Path(folder) / "reference.pkl"
    if out.is_file() or not rows.is_file():
        return out if out.is_file() else None
    with open(Path(folder) / "model.pkl", "rb") as fh:
        model = pickle.load(fh)  # noqa: S301 - the user's own model, kept a moment ago by their kernel
    with open(rows, "rb") as fh:
        frame = pickle.load(fh)  # noqa: S301
    return monitor.write(monitor.build(model, frame, {"run_id": run_id, "name": name}), out)
    with open(Path(folder) / "model.pkl", "rb") as fh:
        model = pickle.load(fh)  # noqa: S301 - the user's own model, kept a moment ago by their kernel
    with open(rows, "rb") as fh:
        frame = pickle.load(fh)  # noqa: S301
    tmp = monitor.write(monitor.build(model, frame, {"run_id": run_id, "name": name}), Path(folder) / ".tmp", name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def stamp_copy(src: Path, dest: Path, run_id: str, model_id: str, artifact_location: str) -> Path:
    """A copy of model folder ``src`` at ``dest`` whose MLmodel names its run and logged model, as
    ``log_model`` writes it (the original stays as the producer wrote it, so a retry starts clean)."""
    from mlflow.models import Model

    shutil.copytree(src, dest)
    mlmodel = Model.load(str(dest / "MLmodel"))
    mlmodel.run_id, mlmodel.model_id, mlmodel.model_uuid = run_id, model_id, model_id
    mlmodel.artifact_path = artifact_location
    mlmodel.save(str(dest / "MLmodel"))
    return dest
