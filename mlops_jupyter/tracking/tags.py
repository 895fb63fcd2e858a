"""Tag names a tracked run carries (part of the user's surface: searchable in MLflow)."""

NOTEBOOK = "mlops.notebook"
CELL_ID = "mlops.cell_id"
CELL_KEY = "mlops.cell_key"
EXECUTION_COUNT = "mlops.execution_count"
SOURCE_HASH = "mlops.source_hash"
HIDDEN_STATE = "mlops.hidden_state"  # what the summary line said about out-of-order or changed cells it read
REPLAYED = "mlops.replayed"  # on a run reproduce replayed: its verdict ("match" / "differ: ...") and the new run
KERNEL = "mlops.kernel"
RECORD = "mlops.record"  # our journal key: makes replays idempotent
GIT_COMMIT = "mlops.git.commit"
GIT_DIRTY = "mlops.git.dirty"
PROJECTS = "mlops.projects"  # JSON: [{root, commit, dirty, paths}] of every project the run used (code, data)
ENVIRONMENT = "mlops.environment"  # runs:/<id>/environment of the kernel session's first run
HOST = "mlops.host"
KIND = "mlops.kind"  # "sweep" / "pipeline" on the parent run of trials or steps
PARENT = "mlflow.parentRunId"
