"""``mlops ...``: the same operations as the magics, for terminals and CI."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import _render, config
from .errors import MlopsError


def _runs(args) -> int:
    from .tracking import list_runs

    settings = config.resolve(args.project or (os.path.dirname(os.path.abspath(args.notebook))
                                               if args.notebook else None))
    notebook = os.path.abspath(args.notebook) if args.notebook else None
    runs = list_runs(settings, notebook=notebook, last=args.last)
    if args.json:
        print(json.dumps(runs, indent=2))
    else:
        header, rows = _render.runs_rows(runs)
        print(_render.text_table(header, rows) if rows else "no tracked runs yet")
        print(f"{len(runs)} runs · {settings.where_to_look()}")
    return 0


def _compare(args) -> int:
    from .tracking import compare_runs

    cmp = compare_runs(config.resolve(args.project), args.run_ids)
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

    result = reproduce(config.resolve(args.project), args.run_id)
    for note in result.notes:
        print(f"mlops: {note}")
    header, rows, marks = _render.reproduction_rows(result)
    print(_render.text_table(header, rows, marks))
    print(f"verdict: {result.verdict} · new run {result.new} · executed notebook: {result.notebook}")
    return 0 if result.verdict == "match" else 1


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _serve_generate(args) -> int:
    from .serving import generate_package

    out = generate_package(args.model_uri, args.out, name=args.name, settings=config.resolve(args.project))
    print(f"serving package for {args.model_uri} in {out} · start it: mlops serve run {out}")
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

    pipe = pipeline.export(args.notebook, args.out)
    print(f"pipeline {pipe.name}: {len(pipe.steps)} steps ({', '.join(s['name'] for s in pipe.steps)}) in "
          f"{pipe.folder} · run it: mlops pipeline run {args.out}{pipe.serving_note()}")
    return 0


def _pipeline_run(args) -> int:
    from . import pipeline

    result = pipeline.run(args.dir, params=args.param, from_step=args.from_step, force=args.force)
    for note in result.notes:
        print(f"mlops: {note}", file=sys.stderr)
    print(result.summary())
    return 0 if result.ok else 1


def _pipeline_status(args) -> int:
    from . import pipeline

    rows = pipeline.status(args.dir)
    print(_render.text_table(["step", "state", "why"], [list(r) for r in rows]))
    return 0 if all(r[1] == "fresh" for r in rows) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlops", description="Jupyter-native MLOps from the terminal.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    runs = sub.add_parser("runs", help="tracked runs, newest first")
    runs.add_argument("--last", type=_positive, metavar="N", help="only the N newest runs")
    runs.add_argument("--notebook", metavar="PATH", help="only this notebook's runs")
    runs.add_argument("--project", metavar="DIR", help="project folder (default: the working directory's)")
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs.set_defaults(func=_runs)
    cmp = sub.add_parser("compare", help="params and metrics of runs side by side")
    cmp.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    cmp.add_argument("--project", metavar="DIR")
    cmp.set_defaults(func=_compare)
    snap = sub.add_parser("snapshot", help="version a data file or folder with DVC (a git commit of its own)")
    snap.add_argument("path", metavar="PATH")
    snap.add_argument("-m", "--message", metavar="MSG")
    snap.add_argument("--push", action="store_true", help="push the data to the default DVC remote")
    snap.set_defaults(func=_snapshot)
    snaps = sub.add_parser("snapshots", help="versions of a snapshotted path and the runs that used them")
    snaps.add_argument("path", nargs="?", metavar="PATH")
    snaps.set_defaults(func=_snapshots)
    rest = sub.add_parser("restore", help="put back the data a run used (--run) or a git revision held (--rev)")
    rest.add_argument("path", metavar="PATH")
    which = rest.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID")
    which.add_argument("--rev", metavar="REV")
    rest.add_argument("--force", action="store_true", help="overwrite changes that are in no snapshot")
    rest.set_defaults(func=_restore)
    rep = sub.add_parser("reproduce", help="re-execute a run from its recorded code, data and params; compare")
    rep.add_argument("run_id", metavar="RUN_ID")
    rep.add_argument("--project", metavar="DIR")
    rep.set_defaults(func=_reproduce)
    serve = sub.add_parser("serve", help="an MLflow model as a FastAPI serving package").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    gen = serve.add_parser("generate", help="write a self-contained serving package for a model")
    gen.add_argument("model_uri", metavar="MODEL_URI", help="runs:/RUN_ID/PATH, models:/NAME/VERSION, "
                     "models:/NAME@ALIAS or a local model folder")
    gen.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")
    gen.add_argument("--name", metavar="NAME", help="package name (default: the registered model's name)")
    gen.add_argument("--project", metavar="DIR", help="project folder whose store resolves MODEL_URI")
    gen.set_defaults(func=_serve_generate)
    srv = serve.add_parser("run", help="serve a generated package with uvicorn")
    srv.add_argument("dir", metavar="DIR")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--workers", type=_positive, default=1, metavar="N")
    srv.set_defaults(func=_serve_run)
    bld = serve.add_parser("build", help="run a package's tests, then build its OCI image (docker, podman or buildah)")
    bld.add_argument("dir", metavar="DIR")
    bld.add_argument("--tag", metavar="T", help="image reference (default NAME:VERSION from the package)")
    bld.add_argument("--base", metavar="IMAGE", help="base image with python3 (default: the official python image "
                     "of the model's Python)")
    bld.add_argument("--push", metavar="REGISTRY", help="push the image to this registry after the build")
    bld.add_argument("--engine", choices=("docker", "podman", "buildah"), help="default: the first one installed")
    bld.add_argument("--pip-index", metavar="URL", help="package index for pip inside the build")
    bld.set_defaults(func=_serve_build)
    man = serve.add_parser("manifests", help="Kubernetes manifests: Deployment, Service, autoscaler, disruption budget")
    man.add_argument("dir", metavar="DIR")
    man.add_argument("--image", required=True, metavar="IMAGE", help="the image the pods run")
    man.add_argument("--replicas", type=_positive, default=2, metavar="N", help="pods (the autoscaler's minimum)")
    man.add_argument("--out", metavar="DIR", help="where the manifests go (default DIR/k8s)")
    man.set_defaults(func=_serve_manifests)
    exp = sub.add_parser("export", help="a tagged notebook -> a parameterized, incremental pipeline folder")
    exp.add_argument("notebook", metavar="NOTEBOOK")
    exp.add_argument("--out", required=True, metavar="DIR")
    exp.set_defaults(func=_export)
    pipe = sub.add_parser("pipeline", help="run an exported pipeline, or show which steps are fresh").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    prun = pipe.add_parser("run", help="run the steps that changed (and what depends on them) with papermill")
    prun.add_argument("dir", metavar="DIR")
    prun.add_argument("-p", "--param", action="append", default=[], metavar="key=value",
                      help="override a parameter of params.yaml for this run")
    prun.add_argument("--from", dest="from_step", metavar="STEP", help="re-run STEP and every step after it")
    prun.add_argument("--force", action="store_true", help="re-run every step")
    prun.set_defaults(func=_pipeline_run)
    pst = pipe.add_parser("status", help="each step: fresh, stale (and why) or failed")
    pst.add_argument("dir", metavar="DIR")
    pst.set_defaults(func=_pipeline_status)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # a terminal wants a prompt answer when a server is down, not MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    try:
        return args.func(args)
    except MlopsError as exc:
        print(f"mlops {args.verb}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a crash: one line, no traceback
        done = "; finished steps are kept: run it again to go on from there" if args.verb == "pipeline" else ""
        print(f"mlops {args.verb}: interrupted{done}.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
