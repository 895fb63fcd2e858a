"""Which model to serve when the user names a run instead of a model URI."""

from __future__ import annotations

from ..errors import InvalidInput, NotFound


def model_of_run(settings, run: str) -> str:
    """The ``runs:/RUN_ID/NAME`` URI of the one model run ``run`` (an id, a unique prefix or a run name)
    logged. Raises RunNotFound for an unknown run, NotFound when it logged no model, and InvalidInput
    naming each model's URI when it logged several."""
    from ..tracking import run_models

    models = run_models(settings, run)
    if not models:
        raise NotFound(f"run {run} logged no model; log one in its cell with the data it was fit on, e.g. "
                       "mlops_jupyter.log_model(model, X_train).", what="model", run=run)
    if len(models) > 1:
        uris = ", ".join(m["model_uri"] for m in models)
        raise InvalidInput(f"run {run} logged {len(models)} models ({uris}); name the one to serve by its URI.",
                           what="models", run=run, models=[m["model_uri"] for m in models],
                           example=models[0]["model_uri"])
    return models[0]["model_uri"]
