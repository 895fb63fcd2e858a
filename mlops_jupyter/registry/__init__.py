"""Models across environments: register a run's model, promote it through the environments' aliases behind
gates, roll back, and read the audit history. Reads use MLflow's client directly; every write goes through
tracking's one writer (``tracking.records.Recording``), so a registry that is down delays a move and a retry
finishes it, never duplicates it.

    register(settings, "train", "iris")                  # -> Registered(name, version, env, lineage)
    promote(settings, "iris/1", "staging")               # gates, copy between registries, alias, audit
    rollback(settings, "iris", "prod")
    history(settings, "iris", env="prod", at=datetime)   # the audit records, and who held the alias then
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import config
from ..errors import AccessDenied, GateFailed, InvalidInput, ModelNotFound, RegistryError, StoreUnavailable
from . import gates as G

AUDIT_PREFIX = "mlops.audit."
WAIT_S = 120.0


@dataclass
class Moved:
    """What a register, promote or rollback did."""
    action: str
    name: str
    version: str
    env: str
    alias: str | None = None
    previous: str | None = None
    gates: list = field(default_factory=list)
    lineage: str = ""
    tests: str = ""  # a register: its serving package's own tests, as pytest summed them up

    def summary(self) -> str:
        if self.action == "register":
            tested = f", serving package tests {self.tests}" if self.tests else ""
            return f"registered {self.name} version {self.version} in {self.env} (lineage {self.lineage}{tested})"
        was = f" (was version {self.previous})" if self.previous else ""
        verb = "promoted" if self.action == "promote" else "rolled back"
        return f"{verb} {self.name}: @{self.alias} in {self.env} is version {self.version}{was}"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _take_up(settings: config.Settings) -> None:
    """Registry moves a process left in its journal when it died or gave up (a registry that stopped answering
    mid-promotion) are finished now, in the background, by any look at the registries."""
    from ..tracking.journal import finish_orphans_once

    finish_orphans_once(settings.state_dir)


def _who() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def _may_move(env: config.Environment, name: str) -> None:
    """MLflow cannot say who may move one alias, so an environment's ``promoters`` do; checked before any
    gate runs or anything is written."""
    who = _who()
    if env.promoters and who not in env.promoters:
        raise AccessDenied(f"{who} may not move @{env.name} of {name} in {env.name}: only its promoters may "
                           f"({', '.join(env.promoters)}); nothing was changed.", user=who, environment=env.name,
                           resource=name, permission="promoter")


def _audit(action: str, env: str, **fields) -> dict:
    t = int(time.time() * 1000)
    return {"key": f"{AUDIT_PREFIX}{t}.{action}.{os.getpid()}", "action": action, "env": env, "who": _who(),
            "t": t, "when": datetime.fromtimestamp(t / 1000, timezone.utc).isoformat(timespec="seconds"), **fields}


MODEL_ID = "mlops.model_id"  # the logged model a version was made from: its copies in other registries carry it too
DENIED = {"PERMISSION_DENIED", "UNAUTHENTICATED"}  # MLflow's basic-auth app: no such permission / no such user


def _denied(code: str, uri: str, env: str, what: str, model: str, permission: str) -> AccessDenied:
    who = _who()
    if code == "UNAUTHENTICATED":
        return AccessDenied(f"the registry of {env} ({uri}) did not accept {who}'s credentials, so {what} did not "
                            "start; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) "
                            "to your user on that server. Nothing was changed.", user=who, environment=env,
                            resource=model, permission=permission)
    return AccessDenied(f"{who} may not go on {what}: MLflow's permissions on registered model {model} in {env} "
                        f"({uri}) refuse it, and it takes {permission}; ask that server's admin or the model's manager "
                        "to grant it. Nothing was changed.", user=who, environment=env, resource=model,
                        permission=permission)


def _write(settings: config.Settings, env: config.Environment, what: str, do, model: str = "") -> str | None:
    """Run ``do(recording)`` against ``env``'s registry through the one writer and wait until it is written;
    ``do`` returns the key of the version record whose number it wants back, or None."""
    from ..tracking.records import Recording

    # inline: applied by the recorder's code in this process (MLflow is loaded here already), journalled first.
    # Files of a new experiment there: the project's place in its own store, beside another SQLite store's database
    where = settings.artifact_location if env.embedded else config.sqlite_artifacts(env.registry_uri)
    rec = Recording(dataclasses.replace(settings, tracking_uri=env.registry_uri, artifact_location=where), inline=True)
    key = do(rec)
    outcome = rec.close(timeout=WAIT_S)
    if outcome.waiting:
        raise StoreUnavailable(uri=env.registry_uri, journal=outcome.journal, reason=outcome.error or "",
                               environment=env.name, what=what)
    refused = next((code for code in rec.codes if code in DENIED), None)
    if refused:
        raise _denied(refused, env.registry_uri, env.name, what, model, "EDIT")
    if rec.warnings:
        raise RegistryError(f"{what} in {env.name} ({env.registry_uri}) was refused by the registry: "
                            f"{rec.warnings[0][:500]}", environment=env.name, uri=env.registry_uri)
    return rec.version(key) if key else None


def _version(env: config.Environment, name: str, version: str | None = None, alias: str | None = None):
    from mlflow.exceptions import MlflowException

    client = _client(env.registry_uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        _absent_or_raise(exc, env.registry_uri)
        what = f"alias @{alias}" if alias else f"version {version}"
        known = [str(mv.version) for mv in _versions(client, name)]
        if not known:
            raise ModelNotFound(f"there is no registered model {name!r} in {env.name} ({env.registry_uri}); "
                                "register a run's model under that name first.", model=name,
                                environment=env.name) from None
        raise ModelNotFound(f"{name} has no {what} in {env.name}; its versions there are "
                            f"{', '.join(sorted(known, key=int))}.", model=name, version=version, alias=alias,
                            environment=env.name, known=known) from exc


ABSENT = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}  # MLflow's "no such thing"


def _absent_or_raise(exc, uri: str, env: str = "", model: str = "") -> None:
    """A registry that said "no such model/alias" is fine to read as empty; one that did not answer is not
    (a gate must never pass because the holder could not be read), nor one that refused the user."""
    code = getattr(exc, "error_code", None)
    if code in DENIED:
        raise _denied(code, uri, env or uri, "reading it", model or "(any)", "READ") from None
    if code not in ABSENT:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(uri=uri, reason=first) from None


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        _absent_or_raise(exc, client.tracking_uri)
        return []


# ---- register -----------------------------------------------------------------------------------------
def register(settings: config.Settings, run: str, name: str, env: str | None = None) -> Moved:
    """Run ``run``'s logged model as a new version of registered model ``name`` in ``env``'s registry, its tags
    carrying the signature, the data snapshots' md5s, the git commit, the run's metrics and its lineage."""
    from ..tracking import get_runs, run_models

    target = config.environment(settings, env)
    if not re.fullmatch(r"[\w.-]+", name or ""):
        raise InvalidInput(f"{name!r} is not a model name; use letters, digits, '.', '_' or '-', e.g. iris-forest.",
                           what="model name", value=name)
    store = dataclasses.replace(settings, tracking_uri=target.tracking_uri)
    (found,) = get_runs(store, [run])
    models = run_models(store, found.info.run_id)
    if not models:
        raise ModelNotFound(f"run {found.info.run_id} has no logged model, so there is nothing to register; log "
                            "one in the run (a tracked cell's model) first.", run=found.info.run_id, model=name)
    named = [m for m in models if m["name"] == name]
    model = named[0] if named else models[0] if len(models) == 1 else None
    if model is None:
        raise InvalidInput(f"run {found.info.run_id} logged {len(models)} models ({', '.join(m['name'] for m in models)}) "
                           f"and none is called {name!r}; register it under one of those names.",
                           what="model", run=found.info.run_id, known=[m["name"] for m in models])
    tags = _lineage_tags(target.tracking_uri, found, model)
    audit = _audit("register", target.name, run=found.info.run_id, lineage=tags[G.LINEAGE])
    key = f"register:{found.info.run_id}:{model['model_id']}:{name}"
    source = tags.pop("mlops.source")
    version = _write(settings, target, f"registering {name}", model=name, do=lambda rec: rec.register(
        key, name, source, run_id=found.info.run_id, model_id=model["model_id"], tags=tags, audit=audit) or key)
    moved = Moved("register", name, version or "?", target.name, lineage=tags[G.LINEAGE])
    if version:  # its serving package's tests, once per model: each promotion's tests gate reuses a pass
        ok, summary, _ = package_tests(settings.project_root, target.registry_uri, name, version, model["model_id"])
        moved.tests = summary if ok else f"FAILED ({summary})"
    return moved


def _lineage_tags(uri: str, run, model: dict) -> dict:
    import tempfile

    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    tags = run.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        where = _client(uri).get_logged_model(model["model_id"]).artifact_location.rstrip("/")
        spec = download_artifacts(f"{where}/MLmodel", dst_path=tmp, tracking_uri=uri)
        sig = Model.load(spec).signature
    sig = sig.to_dict() if sig else None
    data = {k[len("mlops.data."):]: v for k, v in tags.items() if k.startswith("mlops.data.")}
    problems = []
    if not tags.get("mlops.git.commit"):
        problems.append("no git commit")
    elif tags.get("mlops.git.dirty") == "true":
        problems.append("uncommitted changes in the git tree")
    try:
        for project in json.loads(tags.get("mlops.projects") or "[]"):
            if project.get("dirty") and project.get("root") and "uncommitted" not in " ".join(problems):
                problems.append(f"uncommitted changes in {project['root']}")
    except ValueError:
        pass
    out = {"mlops.run": run.info.run_id, MODEL_ID: model["model_id"],
           "mlops.git.commit": tags.get("mlops.git.commit", ""), "mlops.data": json.dumps(data), "mlops.metrics": json.dumps(run.data.metrics),
           G.LINEAGE: "complete" if not problems else "incomplete: " + "; ".join(problems), "mlops.source": where}
    if sig:
        out[G.SIGNATURE] = json.dumps(sig)
    return out


# ---- promote ------------------------------------------------------------------------------------------
@dataclass
class _Context:
    alias: str
    promotion: config.Promotion
    project_root: object
    src: config.Environment
    dst: config.Environment

    candidate: object = None

    def score(self, version, X, y) -> float:
        """``version`` (the candidate, from its registry, or the holder, from the target's) scored on X, y."""
        env = self.src if version is self.candidate else self.dst
        return _metric(self.promotion.metric, y, _load(env.registry_uri, version.name, version.version).predict(X))

    def package_tests(self, version) -> tuple[bool, str, list]:
        return package_tests(self.project_root, self.src.registry_uri, version.name, str(version.version),
                             version.tags.get(MODEL_ID) or version.source)


def package_tests(root, registry_uri: str, name: str, version: str, key: str) -> tuple[bool, str, list]:
    """The serving package of version ``version`` of ``name`` (in the registry at ``registry_uri``), generated afresh
    and put through its own tests: (passed, summary, last lines). A pass is kept under ``key`` (the logged model's
    id, which its copies in other registries carry), so registering pays it once and each promotion reuses it."""
    import tempfile

    from ..serving import generate_package
    from ..serving import package_tests as run

    cache = config.ensure_state_dir(root) / "gate-tests.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return tuple(known[key])
    store = dataclasses.replace(config.resolve(root), tracking_uri=registry_uri)
    with tempfile.TemporaryDirectory(prefix="mlops-gate-") as tmp:
        result = run(generate_package(f"models:/{name}/{version}", Path(tmp) / "pkg", name=name, settings=store))
    if result[0]:
        known[key] = result
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        tmp.replace(cache)
    return result


def _load(uri: str, name: str, version: str):
    import tempfile

    import mlflow.pyfunc
    from mlflow.artifacts import download_artifacts

    where = _client(uri).get_model_version_download_uri(name, version)
    folder = download_artifacts(where, dst_path=tempfile.mkdtemp(prefix="mlops-score-"), tracking_uri=uri)
    return mlflow.pyfunc.load_model(folder)


METRICS = {"accuracy": "accuracy_score", "f1": "f1_score", "r2": "r2_score", "mae": "mean_absolute_error",
           "mse": "mean_squared_error", "precision": "precision_score", "recall": "recall_score"}


def _metric(name: str, y, pred) -> float:
    import sklearn.metrics as M

    if name not in METRICS:
        from ..errors import ConfigError

        raise ConfigError(f"[tool.mlops.promotion] metric {name!r} is not one the gate can compute; use one of "
                          f"{', '.join(METRICS)}.", key="metric", value=name)
    fn = getattr(M, METRICS[name])
    extra = {"average": "macro"} if name in ("f1", "precision", "recall") else {}
    return float(fn(y, pred, **extra))


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME/VERSION`` or ``NAME@ALIAS`` -> (name, version, alias)."""
    m = re.fullmatch(r"([\w.-]+)(?:/(\d+)|@([\w-]+))", ref or "")
    if not m:
        raise InvalidInput(f"{ref!r} does not name a model version; give NAME/VERSION (e.g. iris/3) or NAME@ALIAS "
                           "(e.g. iris@staging).", what="model reference", value=ref)
    return m.group(1), m.group(2), m.group(3)


def promote(settings: config.Settings, ref: str, to: str, force: dict | None = None, env: str | None = None) -> Moved:
    """Move ``to``'s alias (named after the environment) to the version ``ref`` names, after the gates; the
    version is copied into ``to``'s registry first when it lives in another one. ``ref``'s version is looked
    up in the environment its alias names (``iris@staging``), else in ``env`` (default: ``MLOPS_ENV``/dev).
    ``force`` maps a gate's name to the reason it is skipped."""
    name, version, alias = parse_ref(ref)
    force = dict(force or {})
    for gate, reason in force.items():
        if gate not in G.NAMES:
            raise InvalidInput(f"there is no gate {gate!r}; the gates are {', '.join(G.NAMES)}.", what="gate",
                               value=gate, known=list(G.NAMES))
        if not (reason or "").strip():
            raise InvalidInput(f"skipping the {gate} gate needs a reason, recorded with the promotion.",
                               what="reason", gate=gate)
    envs = config.environments(settings)
    src = envs[alias] if alias in envs else config.environment(settings, env)
    dst = config.environment(settings, to)
    _may_move(dst, name)
    candidate = _version(src, name, version, alias)
    holder = None
    if _versions(_client(dst.registry_uri), name):
        from mlflow.exceptions import MlflowException

        try:
            holder = _client(dst.registry_uri).get_model_version_by_alias(name, dst.name)
        except MlflowException as exc:  # no version holds the alias yet, unless the registry is down
            _absent_or_raise(exc, dst.registry_uri)
    same_registry = src.registry_uri == dst.registry_uri
    if holder is not None and same_registry and str(holder.version) == str(candidate.version):
        raise RegistryError(f"{name} version {candidate.version} already holds @{dst.name} in {dst.name}.",
                            model=name, version=str(candidate.version), environment=dst.name)
    ctx = _Context(dst.name, config.promotion(settings), settings.project_root, src, dst, candidate)
    results = G.run(candidate, holder, ctx, force)
    failed = [g["gate"] for g in results if g["status"] == "failed"]
    if failed:
        raise GateFailed(model=name, version=str(candidate.version), environment=dst.name, gates=results, failed=failed)
    audit = _audit("promote", dst.name, source=f"{src.name}/{name}/{candidate.version}", alias=dst.name,
                   previous=str(holder.version) if holder else None, gates=results,
                   reason="; ".join(f"{g}: {r}" for g, r in force.items()) or None)

    def move(rec):
        if same_registry:
            rec.alias(name, dst.name, version=str(candidate.version), audit=audit)
            return None
        key = f"copy:{src.registry_uri}:{name}:{candidate.version}"
        rec.copy_version(key, src.registry_uri, name, str(candidate.version),
                         tags={k: v for k, v in candidate.tags.items() if not k.startswith(AUDIT_PREFIX)
                               and k != "mlops.record"})
        rec.alias(name, dst.name, version_key=key, audit=audit)
        return key

    moved = _write(settings, dst, f"promoting {name}", move, model=name) or str(candidate.version)
    return Moved("promote", name, moved or "?", dst.name, alias=dst.name,
                 previous=str(holder.version) if holder else None, gates=results)


# ---- rollback and history -----------------------------------------------------------------------------
def records(settings: config.Settings, name: str, env: str | None = None) -> list[dict]:
    """The audit records of ``name`` (in ``env``'s registry, or every environment's), oldest first."""
    return _records(settings, name, env)[0]


def _records(settings: config.Settings, name: str, env: str | None) -> tuple[list, list]:
    """(records, the environments that did not answer): a named environment that does not answer raises; across
    all of them, the silent ones are named rather than left out unsaid."""
    from mlflow.exceptions import MlflowException

    envs = [config.environment(settings, env)] if env else list(config.environments(settings).values())
    out, seen, silent = [], False, []
    for e in envs:
        try:
            model = _client(e.registry_uri).get_registered_model(name)
        except MlflowException as exc:
            try:
                _absent_or_raise(exc, e.registry_uri)
            except StoreUnavailable:
                if env:
                    raise
                silent.append(e.name)
            continue
        seen = True
        out += [json.loads(v) for k, v in model.tags.items() if k.startswith(AUDIT_PREFIX)]
    if not seen:
        where = env or ", ".join(config.environments(settings))
        raise ModelNotFound(f"there is no registered model {name!r} in {where}; register a run's model under that "
                            "name first.", model=name, environment=env)
    return sorted(out, key=lambda r: r["t"]), silent


def rollback(settings: config.Settings, name: str, env: str) -> Moved:
    """``env``'s alias back to the version that held it before the last promotion (or rollback) moved it."""
    target = config.environment(settings, env)
    _may_move(target, name)
    current = _version(target, name, alias=target.name)
    moves = [r for r in records(settings, name, target.name) if r.get("alias") == target.name]
    last = next((r for r in reversed(moves) if r["version"] == str(current.version)), None)
    if last is None or not last.get("previous"):
        raise RegistryError(f"@{target.name} of {name} in {target.name} has no earlier holder to return to "
                            f"(version {current.version} is the first one recorded).", model=name,
                            environment=target.name, version=current.version)
    audit = _audit("rollback", target.name, alias=target.name, previous=str(current.version), source=None, gates=[])
    _write(settings, target, f"rolling back {name}",
           lambda rec: rec.alias(name, target.name, version=last["previous"], audit=audit), model=name)
    return Moved("rollback", name, last["previous"], target.name, alias=target.name, previous=str(current.version))


def parse_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise InvalidInput(f"{text!r} is not a time; give an ISO 8601 time such as 2026-12-04T09:30 or "
                           "2026-12-04T09:30:00+00:00 (UTC when no zone is given).", what="time", value=text) from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def history(settings: config.Settings, name: str, env: str | None = None, at: datetime | None = None) -> dict:
    """{"records": the audit records up to ``at`` (all when None), "holders": {env: version holding its alias
    at ``at`` (now when None)}, "unreachable": environments that did not answer}."""
    _take_up(settings)
    found, silent = _records(settings, name, env)
    if at is not None:
        found = [r for r in found if r["t"] <= at.timestamp() * 1000]
    holders = {}
    for r in found:
        if r.get("alias"):
            holders[r["env"]] = r["version"]
    return {"records": found, "holders": holders, "unreachable": silent}


def models(settings: config.Settings) -> list[dict]:
    """Every environment's registered models: [{env, name, versions, aliases: {alias: version}}]; an
    environment that does not answer is listed with ``error``."""
    from ..tracking.query import store_ready

    _take_up(settings)
    out = []
    for env in config.environments(settings).values():
        if env.registry_uri.startswith("sqlite:") and not store_ready(env.registry_uri):
            continue
        try:
            client = _client(env.registry_uri)
            for model in client.search_registered_models():
                versions = sorted((str(mv.version) for mv in _versions(client, model.name)), key=int)
                out.append({"env": env.name, "name": model.name, "versions": versions,
                            "aliases": {k: str(v) for k, v in (model.aliases or {}).items()}})
        except Exception as exc:  # noqa: BLE001 - one environment down must not hide the others
            out.append({"env": env.name, "name": "", "versions": [], "aliases": {},
                        "error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})
    return out


__all__ = ["register", "promote", "rollback", "history", "records", "models", "parse_ref", "parse_time", "Moved"]
