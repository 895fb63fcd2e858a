"""``mlops ...``: the same operations as the magics, for terminals and CI.

The verbs' arguments are declared once in ``commands`` (shared with ``%mlops``), and so is the hint each
typed error gets here. Every failure ends in one line on stderr and an exit status: 2 for a mistake the user
can fix (bad arguments, a missing run, a store that does not answer), 130 for Ctrl-C."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import _render, commands, config
from .commands import CLI, HelpShown, UsageProblem
from .errors import MlopsError


def _scope(args):
    """(settings, notebook) a listing reads: --project's (default: the working directory's) store, and
    --notebook's runs or every run (the default; --all says it explicitly)."""
    notebook = os.path.abspath(args.notebook) if args.notebook else None
    if notebook and not args.project:
        return config.resolve(os.path.dirname(notebook)), notebook
    return commands.project_settings(args.project), notebook


def _runs(args) -> int:
    from .tracking import list_runs

    from .tracking.journal import settle

    settings, notebook = _scope(args)
    # a notebook that just ended may still have records on their way: wait for them (briefly), or say so
    waiting = settle(settings.state_dir, timeout=20)
    if waiting:
        print(f"mlops runs: {waiting} records are still being written (they wait in {settings.state_dir / 'journal'})",
              file=sys.stderr)
    runs = list_runs(settings, notebook=notebook, last=args.last, kind=args.kind, children=True)
    if args.json:
        print(json.dumps(runs, indent=2))
    else:
        header, rows = _render.runs_rows(runs)
        print(_render.text_table(header, rows) if rows else "no tracked runs yet")
        print(f"{len(runs)} {args.kind + ' ' if args.kind else ''}runs · {settings.where_to_look()}")
    return 0


def _compare(args) -> int:
    from .tracking import compare_runs

    settings, notebook = _scope(args)
    cmp = compare_runs(settings, commands.compared(args, settings, notebook))
    header, rows, marks = _render.compare_rows(cmp)
    print(_render.text_table(header, rows, marks))
    return 0


def _snapshot(args) -> int:
    from . import data

    snap = data.snapshot(args.path, args.message, args.push)
    for note in snap.notes:
        print(f"mlops: {note}")
    print(f"snapshot {snap.id} of {snap.path} (md5 {snap.md5})"
          + (" unchanged" if snap.unchanged else f" committed {snap.rev[:8]}")
          + (f", pushed to {snap.pushed_to}" if snap.pushed_to else ""))
    return 0


def _snapshots(args) -> int:
    from . import data

    settings = config.resolve()
    snaps = data.list_snapshots(args.path, None, settings)
    header, rows = _render.snapshot_rows(snaps)
    print(_render.text_table(header, rows) if rows else "no snapshots yet")
    return 0


def _restore(args) -> int:
    from . import data

    settings = config.resolve()
    snap = data.restore(args.path, args.run, args.rev, args.force, None, settings)
    print(f"restored {snap.path} to snapshot {snap.id} (md5 {snap.md5})")
    return 0


def _reproduce(args) -> int:
    from .tracking.reproduce import reproduce

    result = reproduce(commands.project_settings(args.project), args.run_id)
    for note in result.notes:
        print(f"mlops: {note}")
    header, rows, marks = _render.reproduction_rows(result)
    print(_render.text_table(header, rows, marks))
    print(f"verdict: {result.verdict} · new run {result.new} · executed notebook: {result.notebook}")
    return 0 if result.verdict == "match" else 1


def _serve_generate(args) -> int:
    from .serving import generate_package, model_of_run

    settings = commands.project_settings(args.project)
    uri = args.model_uri or model_of_run(settings, args.run)
    out = generate_package(uri, args.out, name=args.name, settings=settings, environment=args.env)
    print(f"serving package for {uri} in {out} · start it: mlops serve run {out}")
    return 0


def _serve_run(args) -> int:
    from .serving import serve

    serve(args.dir, host=args.host, port=args.port, workers=args.workers)
    return 0


def _serve_build(args) -> int:
    from .serving import build_image

    image = build_image(args.dir, tag=args.tag, base=args.base, push=args.push, engine=args.engine,
                        pip_index=args.pip_index, on_line=sys.stderr.write)
    print(f"image {image.tag} built with {image.engine} in {image.build_seconds:.0f} s · "
          f"{image.size_bytes / 1e6:.0f} MB · tests: {image.tests}" + (f" · pushed {image.pushed}" if image.pushed else ""))
    return 0


def _serve_manifests(args) -> int:
    from .serving import write_manifests

    out = write_manifests(args.dir, args.image, replicas=args.replicas, out=args.out)
    print(f"Kubernetes manifests for {args.image} in {out} · apply them: kubectl apply -f {out}")
    return 0


def _export(args) -> int:
    from . import pipeline

    if not args.notebook:
        raise UsageProblem("name the notebook to export, e.g. mlops export train.ipynb --out pipeline")
    pipe = pipeline.check(args.notebook, args.out) if args.check else \
        pipeline.export(args.notebook, args.out or pipeline.default_folder(args.notebook), args.target, args.image)
    for warning in pipe.warnings:
        print(f"mlops export: warning: {warning}", file=sys.stderr)
    print(commands.checked(pipe) if args.check else f"{commands.exported(pipe)} · run it: mlops pipeline run {pipe.folder}"
          + (f" · Kubeflow: {pipe.kfp}" if pipe.kfp else ""))
    return 0


def _pipeline_run(args) -> int:
    from . import pipeline

    # this process exits next: the recorder writes the last records on its own (`mlops runs` waits for them)
    result = pipeline.run(args.dir, params=args.param, from_step=args.from_step, force=args.force,
                          wait_records=args.register, address=args.address, storage=args.storage,
                          max_retries=args.max_retries, kept_driver=True)
    for note in result.notes:
        print(f"mlops: {note}", file=sys.stderr)
    print(result.summary())
    if args.register and result.ok:
        from . import registry

        for _step, name, run in pipeline.fitted(args.dir, result):
            print(_render.moved_text(registry.register(config.resolve(args.dir), run, name, env=args.env)))
    return 0 if result.ok else 1


def _pipeline_status(args) -> int:
    from . import pipeline

    rows = pipeline.status(args.dir)
    print(_render.text_table(["step", "state", "why"], [list(r) for r in rows]))
    stale = pipeline.outdated(args.dir)
    if stale:
        pipe = pipeline.load(args.dir)
        print(f"the export is outdated: {stale}; export it again: mlops export "
              f"{os.path.relpath(pipe.folder / pipe.source)} --out {args.dir}")
    return 0 if all(r[1] == "fresh" for r in rows) and not stale else 1


def _register(args) -> int:
    from . import registry

    print(_render.moved_text(registry.register(config.resolve(), args.run, args.model, env=args.env)))
    return 0


def _promote(args) -> int:
    from . import registry
    from .errors import GateFailed

    try:
        moved = registry.promote(config.resolve(), args.ref, args.to, force=commands.forced(args), env=args.env)
    except GateFailed as exc:
        print(_render.failed_gates_text(exc), file=sys.stderr)
        raise
    print(_render.moved_text(moved))
    return 0


def _rollback(args) -> int:
    from . import registry

    print(_render.moved_text(registry.rollback(config.resolve(), args.name, args.env)))
    return 0


def _models(args) -> int:
    from . import registry

    commands.history_args(args)
    settings = config.resolve()
    if args.history:
        at = registry.parse_time(args.at) if args.at else None
        hist = registry.history(settings, args.name, env=args.env, at=at)
        print(_render.text_table(*_render.history_rows(hist)))
        print(_render.holders_text(hist, at))
        return 0
    header, rows = _render.model_rows(registry.models(settings))
    print(_render.text_table(header, rows) if rows else "no registered models yet")
    return 0


def _report(args) -> int:
    from . import reports

    commands.report_args(args)
    settings = config.resolve(args.target if args.target and os.path.isdir(args.target) else None)
    made = reports.build(settings, args.target, args.baseline, args.out, env=args.env, plots=bool(args.out),
                         log=args.log)
    if args.out:
        print(f"mlops report: {args.out} ({len(made.plots)} plots in {made.folder})")
        for problem in made.problems:
            print(f"mlops report: plot not made: {problem}", file=sys.stderr)
    else:
        print(made.markdown(), end="")
    if args.comment:
        print(f"mlops report: {reports.comment(made, args.out, dry_run=args.dry_run)}")
    return 0


def _retrain(args) -> int:
    from . import retrain

    folder = os.path.abspath(args.dir)
    settings = config.resolve(folder)
    outcome = retrain.retrain(settings, folder, data=args.data, promote_to=args.promote_to, env=args.env,
                              if_drift=args.if_drift, log=args.log,
                              echo=lambda *words: print("mlops retrain:", *words, file=sys.stderr))
    print(outcome.summary())
    return 0


def _monitor(args) -> int:
    from . import monitor
    from .monitor import report, rules

    mode = commands.monitor_mode(args)
    settings = monitor.environment_settings(config.resolve(), args.env)
    if mode == "reference":
        made = monitor.reference(settings, args.target, model=args.model, data=args.data)
        print(monitor.reference_line(made))
        return 0
    if mode == "rules":
        text = rules.alert_rules(args.hold)
        if args.out:
            Path(args.out).write_text(text)
            print(f"mlops monitor: alert rules in {args.out} (check them with promtool check rules {args.out})")
        else:
            print(text, end="")
        return 0
    check = monitor.check(settings, args.source, model=args.model, run=args.run, since=args.since,
                          window=args.window, stattest=args.stattest)
    if args.report:
        Path(args.report).write_text(report.page(check))
    if args.json:
        print(json.dumps(check.as_dict(), indent=1, default=str))
    else:
        print(report.text(check))
        if args.report:
            print(f"mlops monitor: report in {args.report}")
    return 1 if check.drift else 0


HANDLERS = {"runs": _runs, "compare": _compare, "snapshot": _snapshot, "snapshots": _snapshots, "restore": _restore,
            "reproduce": _reproduce, "serve generate": _serve_generate, "serve run": _serve_run, "export": _export,
            "pipeline run": _pipeline_run, "pipeline status": _pipeline_status, "serve build": _serve_build,
            "serve manifests": _serve_manifests, "register": _register, "promote": _promote, "rollback": _rollback,
            "models": _models, "report": _report, "retrain": _retrain, "monitor": _monitor}


def parser():
    return commands.parser(CLI)


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
    except HelpShown:
        return 0
    except UsageProblem as exc:
        print(exc, file=sys.stderr)
        return 2
    # a terminal wants a prompt answer when a server is down, not MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per outcome, no bars
    name = commands.command(CLI, args.spec)
    try:
        return HANDLERS[args.spec.name](args)
    except UsageProblem as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except MlopsError as exc:
        print(f"{name}: {commands.explain(exc, CLI)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a crash: one line, no traceback
        done = "; finished steps are kept: run it again to go on from there" if args.verb == "pipeline" else ""
        print(f"{name}: interrupted{done}.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
