"""Settings resolution: magic/CLI arguments > environment > [tool.mlops] in pyproject.toml > defaults.

Cheap by design (stdlib only): it runs inside ``%load_ext``.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

STATE_DIR = ".mlops"

# key -> environment variables, first set wins
ENV_VARS = {
    "tracking_uri": ("MLOPS_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    "experiment": ("MLOPS_EXPERIMENT",),
    "artifact_location": ("MLOPS_ARTIFACT_LOCATION",),
    "ui_url": ("MLOPS_UI_URL",),  # where the MLflow UI is served, when it is not the tracking server itself
}
KNOWN_KEYS = tuple(ENV_VARS)


@dataclass(frozen=True)
class Settings:
    project_root: Path
    tracking_uri: str
    experiment: str | None = None
    artifact_location: str | None = None
    ui_url: str | None = None
    origin: dict = field(default_factory=dict, compare=False)  # key -> where the value came from

    @property
    def state_dir(self) -> Path:
        return self.project_root / STATE_DIR

    @property
    def is_local_sqlite(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    def where_to_look(self) -> str:
        """A ready command (or URL) that opens these runs in the stock MLflow UI."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri
        cmd = f"mlflow ui --backend-store-uri {self.tracking_uri}"
        if self.artifact_location:
            cmd += f" --default-artifact-root {self.artifact_location}"
        return cmd

    def ui_base(self) -> str | None:
        """Base URL of an MLflow UI serving these runs: ``ui_url`` if set, else an http(s) tracking
        server (which serves its own UI); None for a local store, which no UI serves until started."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return None

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """Link to one run in the MLflow UI, or None when no UI URL is known."""
        base = self.ui_base()
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None


def find_project_root(start: str | os.PathLike | None = None) -> Path:
    """Nearest folder upward holding pyproject.toml or .git; else ``start`` itself."""
    here = Path(start or os.getcwd()).resolve()
    if here.is_file():
        here = here.parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return here


def _pyproject_table(root: Path) -> dict:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            table = tomllib.load(fh).get("tool", {}).get("mlops", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file so [tool.mlops] can be read.",
                          path=str(path)) from None
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.mlops] in {path} must be a table, e.g. [tool.mlops] / experiment = \"demo\".",
                          path=str(path))
    out = {}
    for key, value in table.items():
        norm = key.replace("-", "_")
        if norm not in KNOWN_KEYS:
            valid = ", ".join(k.replace("_", "-") for k in KNOWN_KEYS)
            raise ConfigError(f"[tool.mlops] in {path} has an unknown key {key!r}; the known keys are: {valid}.",
                              path=str(path), key=key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"[tool.mlops] {key} in {path} must be a non-empty string, got {value!r}.",
                              path=str(path), key=key)
        out[norm] = value.strip()
    return out


def _default_tracking_uri(root: Path) -> str:
    return "sqlite:///" + (root / STATE_DIR / "mlflow.db").as_posix()


def resolve(start: str | os.PathLike | None = None, overrides: dict | None = None,
            env: dict | None = None) -> Settings:
    """Settings for the project holding ``start`` (default: the working directory)."""
    root = find_project_root(start)
    env = os.environ if env is None else env
    table = _pyproject_table(root)
    values, origin = {}, {}
    for key in KNOWN_KEYS:
        given = (overrides or {}).get(key)
        if given:
            values[key], origin[key] = given, "argument"
            continue
        for var in ENV_VARS[key]:
            if env.get(var):
                values[key], origin[key] = env[var], var
                break
        else:
            if key in table:
                values[key], origin[key] = table[key], "pyproject.toml [tool.mlops]"
    if "tracking_uri" not in values:
        values["tracking_uri"], origin["tracking_uri"] = _default_tracking_uri(root), "default"
        if "artifact_location" not in values:
            art = (root / STATE_DIR / "artifacts").as_uri()
            values["artifact_location"], origin["artifact_location"] = art, "default"
    uri = values["tracking_uri"]
    if "://" not in uri and not uri.startswith(("sqlite:", "databricks")):
        # a bare folder is MLflow's file store, refused by MLflow 3 by default
        raise ConfigError(
            f"tracking URI {uri!r} (from {origin['tracking_uri']}) is not a URI; use a database URI such as "
            f"sqlite:///{(root / STATE_DIR / 'mlflow.db').as_posix()} or a server URL such as "
            "http://127.0.0.1:5000.", key="tracking_uri", value=uri, origin=origin["tracking_uri"])
    ui = values.get("ui_url")
    if ui and not ui.startswith(("http://", "https://")):
        raise ConfigError(f"ui-url {ui!r} (from {origin['ui_url']}) is not a web address; give the URL the MLflow "
                          "UI answers on, e.g. http://127.0.0.1:5000.", key="ui_url", value=ui, origin=origin["ui_url"])
    return Settings(project_root=root, origin=origin, **values)


def run_tags(env: dict | None = None) -> dict:
    """``MLOPS_RUN_TAGS``: a JSON object of tags added to every run a kernel records (e.g. a CI job's id;
    ``mlops reproduce`` marks its runs so)."""
    raw = (os.environ if env is None else env).get("MLOPS_RUN_TAGS")
    if not raw:
        return {}
    try:
        tags = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"MLOPS_RUN_TAGS is not valid JSON ({exc}); give an object of tag names to values, "
                          "e.g. {\"ci.job\": \"1234\"}.") from None
    if not isinstance(tags, dict):
        raise ConfigError(f"MLOPS_RUN_TAGS must be a JSON object of tag names to values, got {type(tags).__name__}.")
    return {str(k): str(v) for k, v in tags.items()}


def ensure_state_dir(root: str | os.PathLike) -> Path:
    """Create ``<root>/.mlops/`` with a .gitignore of its own, so git never picks it up."""
    state = Path(root) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by mlops-jupyter: local tracking state stays out of git\n*\n")
    return state
