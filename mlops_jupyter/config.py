"""Settings resolution: magic/CLI arguments > environment > [tool.mlops] in pyproject.toml > defaults.

Cheap by design (stdlib only): it runs inside ``%load_ext``.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, UnknownEnvironment

STATE_DIR = ".mlops"

# key -> environment variables, first set wins
ENV_VARS = {
    "tracking_uri": ("MLOPS_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    "experiment": ("MLOPS_EXPERIMENT",),
    "artifact_location": ("MLOPS_ARTIFACT_LOCATION",),
    "ui_url": ("MLOPS_UI_URL",),  # where the MLflow UI is served, when it is not the tracking server itself
    "ray_address": ("RAY_ADDRESS",),  # the Ray cluster `pipeline run` sends its steps to (Ray's own variable)
}
KNOWN_KEYS = tuple(ENV_VARS)


@dataclass(frozen=True)
class Settings:
    project_root: Path
    tracking_uri: str
    experiment: str | None = None
    artifact_location: str | None = None
    ui_url: str | None = None
    ray_address: str | None = None
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


TABLES = ("environments", "promotion")  # [tool.mlops.X] sub-tables, read by their own functions below


def _mlops_table(root: Path) -> dict:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh).get("tool", {}).get("mlops", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file so [tool.mlops] can be read.",
                          path=str(path)) from None


def _pyproject_table(root: Path) -> dict:
    path = root / "pyproject.toml"
    table = _mlops_table(root)
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.mlops] in {path} must be a table, e.g. [tool.mlops] / experiment = \"demo\".",
                          path=str(path))
    out = {}
    for key, value in table.items():
        norm = key.replace("-", "_")
        if norm in TABLES:
            continue
        if norm not in KNOWN_KEYS:
            valid = ", ".join(k.replace("_", "-") for k in KNOWN_KEYS + TABLES)
            raise ConfigError(f"[tool.mlops] in {path} has an unknown key {key!r}; the known keys are: {valid}.",
                              path=str(path), key=key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"[tool.mlops] {key} in {path} must be a non-empty string, got {value!r}.",
                              path=str(path), key=key)
        out[norm] = value.strip()
    return out


def _default_tracking_uri(root: Path) -> str:
    return "sqlite:///" + (root / STATE_DIR / "mlflow.db").as_posix()


def sqlite_artifacts(uri: str) -> str | None:
    """Where new experiments of the SQLite store at ``uri`` keep their files when nothing says: beside the
    database (``mlflow.db`` -> ``artifacts``, as under .mlops; ``staging.db`` -> ``staging-artifacts``). MLflow's own
    default is ./mlruns under whatever folder the writing process runs in (the project, or the folder JupyterLab
    was started from). None for any other store: a server decides, and so does a database's admin."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///").partition("?")[0]).absolute()
    return (db.parent / ("artifacts" if db.name == "mlflow.db" else f"{db.stem}-artifacts")).as_uri()


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
    elif "artifact_location" not in values and (art := sqlite_artifacts(values["tracking_uri"])):
        values["artifact_location"], origin["artifact_location"] = art, "default (beside the database)"
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


DEFAULT_ENV = "dev"
ENV_KEYS = ("tracking_uri", "registry_uri", "dvc_remote", "serving", "promoters")


@dataclass(frozen=True)
class Environment:
    """One place models live in: its registry (an MLflow store) and, optionally, its data remote, serving
    settings and who may move its aliases (``promoters``; empty = anyone the registry lets write)."""
    name: str
    tracking_uri: str
    registry_uri: str
    dvc_remote: str | None = None
    serving: dict = field(default_factory=dict, compare=False)
    promoters: tuple = ()
    embedded: bool = False  # the project's own store (no [tool.mlops.environments] entry)


def environments(settings: Settings) -> dict[str, Environment]:
    """Every configured environment by name; with none configured, ``dev`` is the project's own store (a
    configured list without ``dev`` still gets it, so a notebook's runs always have a registry)."""
    path = settings.project_root / "pyproject.toml"
    table = _mlops_table(settings.project_root).get("environments", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.mlops.environments] in {path} must hold one table per environment, e.g. "
                          "[tool.mlops.environments.staging] / tracking-uri = \"http://127.0.0.1:5001\".", path=str(path))
    found = {DEFAULT_ENV: Environment(DEFAULT_ENV, settings.tracking_uri, settings.tracking_uri, embedded=True)}
    for name, entry in table.items():
        where = f"[tool.mlops.environments.{name}] in {path}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table with at least tracking-uri = \"...\".", path=str(path), env=name)
        values = {}
        for key, value in entry.items():
            norm = key.replace("-", "_")
            if norm not in ENV_KEYS:
                valid = ", ".join(k.replace("_", "-") for k in ENV_KEYS)
                raise ConfigError(f"{where} has an unknown key {key!r}; the known keys are: {valid}.",
                                  path=str(path), env=name, key=key)
            values[norm] = value
        uri = values.get("tracking_uri")
        if not isinstance(uri, str) or "://" not in uri and not uri.startswith("sqlite:"):
            raise ConfigError(f"{where} needs tracking-uri, a store URI such as http://127.0.0.1:5001 or "
                              f"sqlite:///path/to/mlflow.db; got {uri!r}.", path=str(path), env=name)
        promoters = values.get("promoters", [])
        if not isinstance(promoters, list) or not all(isinstance(p, str) for p in promoters):
            raise ConfigError(f"{where} promoters must be a list of user names, e.g. promoters = [\"alice\"]; got "
                              f"{promoters!r}.", path=str(path), env=name)
        found[name] = Environment(name, uri, values.get("registry_uri") or uri, values.get("dvc_remote"),
                                  dict(values.get("serving") or {}), tuple(promoters))
    return found


def environment(settings: Settings, name: str | None = None, env: dict | None = None) -> Environment:
    """The environment ``name`` names (else ``MLOPS_ENV``, else ``dev``)."""
    name = name or (os.environ if env is None else env).get("MLOPS_ENV") or DEFAULT_ENV
    known = environments(settings)
    if name not in known:
        raise UnknownEnvironment(environment=name, known=sorted(known),
                                 path=str(settings.project_root / "pyproject.toml"))
    return known[name]


PROMOTION_KEYS = ("metric", "mode", "min_delta", "evaluation_data", "target")


@dataclass(frozen=True)
class Promotion:
    """[tool.mlops.promotion]: how the metric gate re-scores a candidate and the alias holder."""
    metric: str | None = None
    mode: str = "max"
    min_delta: float = 0.0
    evaluation_data: str | None = None  # a snapshotted file (CSV or Parquet) holding the features and ``target``
    target: str = "target"


def promotion(settings: Settings) -> Promotion:
    path = settings.project_root / "pyproject.toml"
    table = _mlops_table(settings.project_root).get("promotion", {})
    values = {}
    for key, value in (table if isinstance(table, dict) else {}).items():
        norm = key.replace("-", "_")
        if norm not in PROMOTION_KEYS:
            valid = ", ".join(k.replace("_", "-") for k in PROMOTION_KEYS)
            raise ConfigError(f"[tool.mlops.promotion] in {path} has an unknown key {key!r}; the known keys are: "
                              f"{valid}.", path=str(path), key=key)
        values[norm] = value
    if values.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"[tool.mlops.promotion] mode in {path} must be \"max\" or \"min\", got "
                          f"{values['mode']!r}.", path=str(path), key="mode")
    if not isinstance(values.get("min_delta", 0.0), (int, float)):
        raise ConfigError(f"[tool.mlops.promotion] min-delta in {path} must be a number, e.g. 0.01; got "
                          f"{values['min_delta']!r}.", path=str(path), key="min_delta")
    return Promotion(**values)


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


def switched_off(name: str) -> bool:
    """Whether the on/off environment variable ``name`` (on unless set) is set to 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def ensure_state_dir(root: str | os.PathLike) -> Path:
    """Create ``<root>/.mlops/`` with a .gitignore of its own, so git never picks it up."""
    state = Path(root) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    ignore = state / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by mlops-jupyter: local tracking state stays out of git\n*\n")
    return state
