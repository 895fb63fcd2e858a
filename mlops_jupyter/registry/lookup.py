"""The registry seen from elsewhere: the run behind an alias, the promotions of the versions some runs made, and
which environments' aliases the current user may move."""

from __future__ import annotations

import json

from .. import config


def run_of(settings: config.Settings, ref: str, env: str | None = None) -> tuple[str, str]:
    """(id of the run that made it, how it was found) of the version ``ref`` names (``NAME@ALIAS`` or ``NAME/VERSION``), looked up in the
    environment its alias names, else in ``env``."""
    from . import _version, parse_ref

    name, version, alias = parse_ref(ref)
    envs = config.environments(settings)
    where = envs[alias] if alias in envs else config.environment(settings, env)
    mv = _version(where, name, version, alias)
    held = f"@{alias}" if alias else ""
    # a version copied into another environment's registry keeps its origin run in the mlops.run tag
    return (mv.tags or {}).get("mlops.run") or mv.run_id, f"{name}{held} version {mv.version} in {where.name}"


def promotions_of_runs(settings: config.Settings, run_ids: set, env: str | None = None) -> list[dict]:
    """The promotions (audit records with their gates) of every model version made by one of ``run_ids``, in any
    environment (or ``env``): [{model, version, to, gates: [{gate, status, detail}], when}], oldest first."""
    from . import AUDIT_PREFIX, _client, _versions

    envs = [config.environment(settings, env)] if env else list(config.environments(settings).values())
    made, names = set(), set()  # (environment, model, version) of the runs' versions
    for e in envs:
        if e.registry_uri.startswith("sqlite:"):
            from ..tracking.query import store_ready

            if not store_ready(e.registry_uri):
                continue
        client = _client(e.registry_uri)
        for rid in run_ids:
            for mv in client.search_model_versions(f"run_id = '{rid}'"):
                made.add(f"{e.name}/{mv.name}/{mv.version}")
                names.add(mv.name)
    out = []
    for e in envs if made else []:
        client = _client(e.registry_uri)
        for name in names:
            for mv in _versions(client, name):
                for key, value in mv.tags.items():
                    if key.startswith(AUDIT_PREFIX):
                        rec = json.loads(value)
                        if rec.get("action") == "promote" and rec.get("source") in made:
                            out.append({"model": name, "version": rec["source"].rsplit("/", 1)[1],
                                        "to": rec.get("env"), "gates": rec.get("gates") or [], "t": rec.get("t", 0)})
    return sorted({(r["model"], r["version"], r["to"], r["t"]): r for r in out}.values(), key=lambda r: r["t"])


def movable(settings: config.Settings) -> dict:
    """{environment: whether the current user may move its alias} (its ``promoters``, when it names any; the
    registry's own permissions still decide when the move is written)."""
    from . import _who

    who = _who()
    return {name: not env.promoters or who in env.promoters for name, env in config.environments(settings).items()}


def holder(settings: config.Settings, name: str, env: str) -> str | None:
    """The version ``env``'s alias of ``name`` points at, or None (no model, no alias yet)."""
    from . import _version
    from ..errors import ModelNotFound

    where = config.environment(settings, env)
    try:
        return str(_version(where, name, alias=where.name).version)
    except ModelNotFound:
        return None
