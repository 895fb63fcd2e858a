"""Typed errors with fields: the core raises them, each front door words them its own way.

A core message says what was wrong and what would be right in terms of the thing itself (a path, a run,
a cell), never in terms of one door (`%mlops ...`, `--force`, an HTTP verb): the magics, the CLI and the
server each add their own hint from the error's type and fields, and the server picks the HTTP status
from the type (``http_status``), never from the message text.
"""

from __future__ import annotations


class MlopsError(Exception):
    """A problem the user can fix: the message says what was wrong and what would be right."""

    http_status = 400
    code = "bad_request"  # a stable, machine-readable name for the JSON error body

    def __init__(self, message: str = "", **fields):
        super().__init__(message)
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)


class ConfigError(MlopsError):
    """Bad configuration value in magic arguments, MLOPS_* variables or [tool.mlops]."""

    code = "bad_config"


class UnknownEnvironment(ConfigError):
    """``environment`` is not one of the ``known`` environments configured in ``path``."""

    code = "unknown_environment"

    def __init__(self, message: str = "", environment: str = "", known: list | None = None, path: str = "",
                 **fields):
        known = list(known or [])
        super().__init__(message or f"there is no environment {environment!r}; the configured ones are "
                                    f"{', '.join(known)} (each a [tool.mlops.environments.NAME] table in {path}, "
                                    "plus the project's own store as dev).",
                         environment=environment, known=known, path=path, **fields)


class InvalidInput(MlopsError):
    """A value the user gave (an argument, a field of a request) that cannot be used as given."""

    code = "invalid_input"


class NotFound(MlopsError):
    """Something named by the user does not exist (a run, a path, a step, a snapshot)."""

    http_status = 404
    code = "not_found"


class RunNotFound(NotFound):
    """No run matches ``run`` (a full id, a prefix or a run name) in the store at ``uri``."""

    code = "run_not_found"

    def __init__(self, message: str = "", run: str = "", uri: str = "", **fields):
        super().__init__(message or f"no run matches {run!r} in {uri or 'the tracking store'}; give a full run id, "
                                    "an unambiguous prefix of one, or a run name.", run=run, uri=uri, **fields)


class Conflict(MlopsError):
    """The request is valid but the current state forbids it (changes that would be lost, a busy folder)."""

    http_status = 409
    code = "conflict"


class UnsnapshottedChanges(Conflict):
    """``path`` holds changes that are in no snapshot, and the operation would discard them."""

    code = "unsnapshotted_changes"


class Busy(Conflict):
    """Another process holds ``what`` right now (a pipeline folder, a store being migrated)."""

    code = "busy"


class StoreError(MlopsError):
    """The tracking store could not be read or written (down, unreachable, refusing)."""

    http_status = 503
    code = "store_unavailable"


class StoreUnavailable(StoreError):
    """The store at ``uri`` did not answer; ``journal``, when set, is where the records wait meanwhile."""

    def __init__(self, message: str = "", uri: str = "", journal: str | None = None, reason: str = "", **fields):
        if not message:
            message = f"the tracking store {uri} is not answering ({reason or 'no reply'})"
            message += f"; the records wait in {journal} and are written when it is back." if journal else "."
        super().__init__(message, uri=uri, journal=journal, reason=reason, **fields)


class StoreBroken(StoreError):
    """The store at ``uri`` is damaged (e.g. left half-migrated) and was not repaired automatically;
    ``fix`` is the exact step that repairs it."""

    http_status = 500
    code = "store_broken"

    def __init__(self, message: str = "", uri: str = "", fix: str = "", **fields):
        super().__init__(message or f"the tracking store {uri} is damaged; {fix}", uri=uri, fix=fix, **fields)


class PipelineError(MlopsError):
    """A notebook that cannot become a pipeline, or a pipeline step that failed: ``notebook``,
    ``cell_index`` and ``cell_id`` point at the cell when one is to blame."""

    code = "pipeline_error"


class SweepError(MlopsError):
    """A sweep that cannot run as asked: bad space, bad cell body, resources the cluster lacks."""

    code = "sweep_error"


class AccessDenied(MlopsError):
    """``user`` lacks ``permission`` on ``resource`` in ``environment``."""

    http_status = 403
    code = "access_denied"


class ServingError(MlopsError):
    """A serving package that could not be shipped: ``step`` says where it stopped (tests, build, inspect,
    push) and ``log`` holds the last lines of that step's output."""

    http_status = 422
    code = "serving_error"


class RegistryError(MlopsError):
    """A registry operation that cannot go ahead as asked."""

    code = "registry_error"


class ModelNotFound(NotFound):
    """No registered model ``model`` (or no ``version`` / ``alias`` of it) in ``environment``'s registry."""

    code = "model_not_found"


class GateFailed(Conflict):
    """Promotion refused: ``failed`` names the gates that did not pass; ``gates`` holds every gate's result
    (name, status, detail)."""

    code = "gate_failed"

    def __init__(self, message: str = "", model: str = "", version: str = "", environment: str = "",
                 gates: list | None = None, failed: list | None = None, **fields):
        gates, failed = list(gates or []), list(failed or [])
        details = "; ".join(f"{g['gate']}: {g['detail']}" for g in gates if g["gate"] in failed)
        super().__init__(message or f"{model} version {version} was not promoted to {environment}: {details}.",
                         model=model, version=version, environment=environment, gates=gates, failed=failed,
                         **fields)


class NoReference(NotFound):
    """Model ``model`` of run ``run`` has no reference profile (or, ``what`` = "reference data", no training data
    was found to build one from)."""

    code = "no_reference"


class OtherModel(Conflict):
    """A prediction log holds predictions of ``found`` (model versions), not of ``expected``."""

    code = "other_model"
