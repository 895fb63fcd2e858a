"""Runtime hand-off, called by the exported step notebooks: ``save`` a step's outputs, ``load`` a
step's inputs, ``save_metrics``. The format follows the value's type: pandas DataFrame -> parquet,
numpy array -> npy, scikit-learn / xgboost / lightgbm models -> joblib, torch -> torch.save, anything
else -> cloudpickle. Stdlib-only at import time: each format's library is imported when used.
"""

from __future__ import annotations

import json
import os
import sys

MANIFEST = "_manifest.json"


class HandoffError(Exception):
    """A variable that cannot be handed from one step to the next (or was never produced)."""


def _module(value) -> str:
    return type(value).__module__.split(".")[0]


def _kind(value) -> str:
    mod = _module(value)
    if mod == "pandas" and type(value).__name__ == "DataFrame":
        return "parquet"
    if mod == "numpy" and type(value).__name__ == "ndarray" and not value.dtype.hasobject:
        return "npy"
    if mod in ("sklearn", "xgboost", "lightgbm", "catboost") or (
            "sklearn.base" in sys.modules and isinstance(value, sys.modules["sklearn.base"].BaseEstimator)):
        return "joblib"
    if mod == "torch":
        return "torch"
    return "pickle"


def _write(kind: str, value, path: str) -> None:
    if kind == "parquet":
        value.to_parquet(path)
    elif kind == "npy":
        import numpy as np

        with open(path, "wb") as fh:
            np.save(fh, value, allow_pickle=False)
    elif kind == "joblib":
        import joblib

        joblib.dump(value, path)
    elif kind == "torch":
        import torch

        torch.save(value, path)
    else:
        import cloudpickle

        with open(path, "wb") as fh:
            cloudpickle.dump(value, fh)


def save(folder: str, values: dict, step: str) -> None:
    """Write each of ``values`` into ``folder`` (replacing what a previous run left there)."""
    os.makedirs(folder, exist_ok=True)
    manifest = {}
    for name, value in values.items():
        kind = _kind(value)
        path = os.path.join(folder, f"{name}.{kind}")
        tmp = path + ".tmp"
        try:
            try:
                _write(kind, value, tmp)
            except Exception:  # noqa: BLE001 - parquet refuses some frames (mixed-type or non-str columns)
                if kind != "parquet":
                    raise
                kind, path = "pickle", os.path.join(folder, f"{name}.pickle")
                tmp = path + ".tmp"
                _write(kind, value, tmp)
        except Exception as exc:  # noqa: BLE001 - whatever the library raised, the user gets one clear line
            if os.path.exists(tmp):
                os.remove(tmp)
            t = type(value)
            raise HandoffError(
                f"step {step!r} hands the variable {name!r} (type {t.__module__}.{t.__qualname__}) to later steps, "
                f"but it cannot be saved ({type(exc).__name__}: {exc}). Turn it into data (a list, a DataFrame, an "
                f"array) before the step ends, or create it again in the steps that use it.") from None
        os.replace(tmp, path)
        manifest[name] = os.path.basename(path)
    for old in os.listdir(folder):  # files of names this step no longer hands on
        if old != MANIFEST and old not in manifest.values():
            os.remove(os.path.join(folder, old))
    with open(os.path.join(folder, MANIFEST), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)


def load(folder: str, name: str, step: str, producer: str):
    """The value of ``name`` that step ``producer`` saved into ``folder``."""
    try:
        with open(os.path.join(folder, MANIFEST)) as fh:
            file = json.load(fh)[name]
    except (OSError, KeyError, ValueError):
        raise HandoffError(f"step {step!r} uses {name!r} from step {producer!r}, but {folder} holds no saved "
                           f"{name!r}: run step {producer!r} first (mlops pipeline run), and check that it "
                           f"still assigns {name!r}.") from None
    path = os.path.join(folder, file)
    kind = file.rsplit(".", 1)[1]
    if kind == "parquet":
        import pandas as pd

        return pd.read_parquet(path)
    if kind == "npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if kind == "joblib":
        import joblib

        return joblib.load(path)
    if kind == "torch":
        import torch

        return torch.load(path, weights_only=False)
    import cloudpickle  # noqa: F401 - registers what cloudpickle-made pickles need

    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)


def example_key(name: str) -> str:
    """The hand-off name of model ``name``'s input example (with a dot: never a Python variable's name)."""
    return f"{name}.example"


def reference_key(name: str) -> str:
    """The hand-off name of the rows of model ``name``'s training data its reference profile (monitor) is built from."""
    return f"{name}.reference"


def model_values(namespace: dict, models: dict, step: str) -> dict:
    """For each model:NAME of ``step`` ({NAME: source of the data it is fit on}): {NAME: the model,
    "NAME.example": the first rows of that data as a DataFrame, "NAME.reference": up to 100,000 random rows of it},
    for ``save``."""
    out = {}
    for name, data_src in models.items():
        if name not in namespace:
            raise HandoffError(f"step {step!r} tags model:{name}, but {name} is not defined when the step ends; "
                               f"assign the fitted model to {name}.")
        model = namespace[name]
        if not callable(getattr(model, "predict", None)):
            t = type(model)
            raise HandoffError(f"model:{name} of step {step!r} is a {t.__module__}.{t.__qualname__} with no predict "
                               "method; model:NAME tags a fitted model, e.g. a scikit-learn estimator.")
        try:
            data = eval(data_src, namespace)  # noqa: S307 - the step's own expression, found by export's AST
        except Exception as exc:  # noqa: BLE001
            raise HandoffError(f"model:{name} of step {step!r}: the data it is fit on, `{data_src}`, cannot be read "
                               f"when the step ends ({type(exc).__name__}: {exc}); its first rows become the model's "
                               "input example.") from None
        out[name] = model
        out[example_key(name)] = _framed(data, model, name, step, "example_frame")
        out[reference_key(name)] = _framed(data, model, name, step, "reference_frame")
    return out


def _framed(data, model, name: str, step: str, how: str):
    from ..errors import InvalidInput
    from ..tracking import models

    try:
        return getattr(models, how)(data, model, name)
    except InvalidInput as exc:
        raise HandoffError(f"step {step!r}: {exc}") from None


def _scalar(value):
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return value
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays, 1-element tensors
    if callable(item) and getattr(value, "size", getattr(value, "numel", lambda: 1)) in (1, None):
        try:
            out = item()
        except Exception:  # noqa: BLE001
            return None
        return out if isinstance(out, (int, float)) and not isinstance(out, bool) else None
    return None


def save_metrics(path: str, names: list, namespace: dict) -> dict:
    """Write the scalar values of ``names`` (a dict's scalar items too) as JSON; returns them."""
    out = {}
    for name in names:
        value = namespace.get(name)
        if isinstance(value, dict):
            for k, v in value.items():
                if _scalar(v) is not None:
                    out[f"{name}.{k}" if name != "metrics" else str(k)] = _scalar(v)
        elif _scalar(value) is not None:
            out[name] = _scalar(value)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
    return out
