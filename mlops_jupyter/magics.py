"""``%mlops`` / ``%%mlops``: argument parsing and display only; the work happens in the core."""

from __future__ import annotations

import argparse
import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from . import _render
from .errors import MlopsError
from .tracking.session import RunOptions, Tracker

VERBS = ("init", "run", "autotrack", "runs", "compare", "snapshot", "snapshots", "restore", "reproduce", "sweep",
         "serve", "export")
CELL_VERBS = {"run": "[--name N] [--metrics acc,loss]",
              "sweep": '--space "lr=loguniform(1e-4,1e-1)" --metric acc --mode max [--samples N]'}
_SKIP_AUTOTRACK = ("%mlops", "%%mlops", "%load_ext", "%reload_ext", "%unload_ext", "%pip", "%conda")


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes become one clean UsageError naming the argument and the right form."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}. Right form: {self.format_usage().strip()[len('usage: '):]}")

    def exit(self, status=0, message=None):  # --help
        if message:
            raise UsageError(message)
        raise UsageError(self.format_help())


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. team=vision)")
    return key.strip(), value.strip()


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated variable names, e.g. acc,loss")
    return names


def _number(cast, ok, what: str):
    """An argparse type: ``cast`` the text and check it with ``ok``, else say what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


_positive = _number(int, lambda v: v >= 1, "a positive whole number")
_amount = _number(float, lambda v: v >= 0, "a number >= 0 (fractions such as 0.5 are allowed)")


def _identifier(text: str) -> str:
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not a variable name")
    return text


def _parsers() -> dict:
    p = {}
    p["init"] = _Parser(prog="%mlops init", add_help=False)
    p["init"].add_argument("--experiment", metavar="NAME")
    p["init"].add_argument("--tracking-uri", metavar="URI")
    p["run"] = _Parser(prog="%%mlops run", add_help=False)
    p["run"].add_argument("--name", metavar="N")
    p["run"].add_argument("--metrics", type=_names, default=[], metavar="acc,loss")
    p["run"].add_argument("--tag", type=_key_value, action="append", default=[], metavar="k=v")
    p["run"].add_argument("--param", type=_key_value, action="append", default=[], metavar="k=v")
    p["run"].add_argument("--model", type=_identifier, action="append", default=[], metavar="NAME",
                          help="log the fitted model in variable NAME (fit in this cell) in the run")
    p["autotrack"] = _Parser(prog="%mlops autotrack", add_help=False)
    p["autotrack"].add_argument("state", choices=["on", "off"])
    p["runs"] = _Parser(prog="%mlops runs", add_help=False)
    p["runs"].add_argument("--last", type=_positive, metavar="N")
    p["runs"].add_argument("--all", action="store_true", help="every tracked run of the project's store")
    p["compare"] = _Parser(prog="%mlops compare", add_help=False)
    p["compare"].add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p["compare"].add_argument("--last", type=_positive, metavar="N", help="the N newest runs of this notebook")
    p["snapshot"] = _Parser(prog="%mlops snapshot", add_help=False)
    p["snapshot"].add_argument("path", metavar="PATH")
    p["snapshot"].add_argument("-m", "--message", metavar="MSG")
    p["snapshot"].add_argument("--push", action="store_true")
    p["snapshots"] = _Parser(prog="%mlops snapshots", add_help=False)
    p["snapshots"].add_argument("path", nargs="?", metavar="PATH")
    p["restore"] = _Parser(prog="%mlops restore", add_help=False)
    p["restore"].add_argument("path", metavar="PATH")
    which = p["restore"].add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID")
    which.add_argument("--rev", metavar="REV")
    p["restore"].add_argument("--force", action="store_true")
    p["reproduce"] = _Parser(prog="%mlops reproduce", add_help=False)
    p["reproduce"].add_argument("run_id", metavar="RUN_ID")
    p["sweep"] = _Parser(prog="%%mlops sweep", add_help=False)
    space = p["sweep"].add_mutually_exclusive_group(required=True)
    space.add_argument("--space", metavar='"lr=loguniform(1e-4,1e-1); depth=choice(3,5,8)"')
    space.add_argument("--space-from", type=_identifier, metavar="VAR")
    p["sweep"].add_argument("--metric", type=_identifier, required=True, metavar="NAME")
    p["sweep"].add_argument("--mode", choices=["max", "min"], required=True)
    p["sweep"].add_argument("--samples", type=_positive, metavar="N")
    p["sweep"].add_argument("--cpus-per-trial", type=_amount, default=1.0, metavar="C")
    p["sweep"].add_argument("--gpus-per-trial", type=_amount, default=0.0, metavar="G")
    p["sweep"].add_argument("--concurrency", type=_positive, metavar="K")
    p["sweep"].add_argument("--scheduler", choices=["asha"])
    p["sweep"].add_argument("--address", metavar="ray://host:10001")
    p["sweep"].add_argument("--retries", type=int, choices=range(0, 11), default=0, metavar="N")
    p["sweep"].add_argument("--name", metavar="N")
    p["serve"] = _Parser(prog="%mlops serve", add_help=False)  # only generate: `serve run` would block the kernel
    p["serve"].add_argument("action", choices=["generate"])
    p["serve"].add_argument("model_uri", metavar="MODEL_URI")
    p["serve"].add_argument("--out", required=True, metavar="DIR")
    p["serve"].add_argument("--name", metavar="NAME")
    p["export"] = _Parser(prog="%mlops export", add_help=False)
    p["export"].add_argument("notebook", nargs="?", metavar="NOTEBOOK", help="default: this notebook")
    p["export"].add_argument("--out", required=True, metavar="DIR")
    return p


PARSERS = _parsers()


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%mlops: cannot read the arguments ({exc}); check the quotes in: {line}") from None


def _run_header(raw: str):
    """For a ``%%mlops run ...`` cell: (options, body, magic line); None for any other cell.
    Raises UsageError for a run line with bad arguments."""
    text = raw.lstrip("\n")
    if not text.startswith("%%mlops"):
        return None
    first, _, body = text.partition("\n")
    words = _split(first[len("%%mlops"):])
    if not words or words[0] != "run":
        return None
    ns = PARSERS["run"].parse_args(words[1:])
    return RunOptions(name=ns.name, metrics=ns.metrics, tags=dict(ns.tag), params=dict(ns.param),
                      models=ns.model), body, first


def _trackable(raw: str) -> bool:
    lines = [ln.strip() for ln in raw.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines or lines[0].startswith(_SKIP_AUTOTRACK):
        return False
    return not all(ln.startswith(("%", "!")) for ln in lines)


def _execution_count(shell, info) -> int:
    """The cell's In[n]: IPython 9 counts it before pre_run_cell, IPython 8 after; the input history
    holds every earlier stored cell in both, and this one not yet."""
    hm = shell.history_manager
    if getattr(info, "store_history", False) and hm is not None:
        return len(hm.input_hist_raw)
    return shell.execution_count


@magics_class
class MlopsMagics(Magics):
    def __init__(self, shell, tracker: Tracker):
        super().__init__(shell)
        self.tracker = tracker
        self._nested = False
        self._header_cache = (None, None)

    # ---- the hooks that make ``%%mlops run`` and autotrack work ----------------------------
    def _header(self, raw: str):
        if self._header_cache[0] != raw:
            try:
                parsed = _run_header(raw)
            except UsageError:
                parsed = None  # left to the cell magic, which reports it
            self._header_cache = (raw, parsed)
        return self._header_cache[1]

    def strip_run_header(self, lines: list[str]) -> list[str]:
        """Input transformer: a valid ``%%mlops run`` cell executes as its plain body, so its
        exceptions, output and last value behave exactly as in an untracked cell."""
        if lines and lines[0].startswith("%%mlops") and self._header("".join(lines)) is not None:
            return lines[1:]
        return lines

    def pre_run_cell(self, info) -> None:
        if self._nested or getattr(info, "silent", False):
            return
        try:
            raw, cell_id = info.raw_cell, getattr(info, "cell_id", None)
            parsed = self._header(raw)
            if self.tracker.configured:
                self.tracker.note_cell(raw, cell_id)
                if parsed is not None or self.tracker.autotrack:
                    cell_id = self.tracker.cell_id_for(raw, cell_id)
            count = _execution_count(self.shell, info)
            if parsed is not None:
                opts, body, first = parsed
                self.tracker.begin(body, opts, cell_id, magic=first, count=count)
            elif self.tracker.autotrack and _trackable(raw) and not self.tracker.is_parameters_cell(raw, cell_id):
                self.tracker.begin(raw, RunOptions(), cell_id, count=count)
        except (MlopsError, OSError) as exc:  # tracking problems never stop the cell
            print(f"mlops: this cell is not tracked: {exc}")

    def post_run_cell(self, result) -> None:
        if not self._nested:
            try:
                self.tracker.finish(result)
            except OSError as exc:
                print(f"mlops: this cell's record could not be written to the journal: {exc}")

    # ---- %mlops VERB ... --------------------------------------------------------------------
    @line_cell_magic
    def mlops(self, line: str, cell: str | None = None):
        """%mlops init|autotrack|runs|compare ... and %%mlops run: see the README."""
        words = _split(line)
        if not words or words[0] not in VERBS:
            got = f"unknown verb {words[0]!r}" if words else "a verb is missing"
            raise UsageError(f"%mlops: {got}; use one of: {', '.join(VERBS)} (e.g. `%mlops runs --last 5`).")
        verb, args = words[0], words[1:]
        if (verb in CELL_VERBS) != (cell is not None):
            raise UsageError(f"%mlops {verb} is a cell magic: put `%%mlops {verb} {CELL_VERBS[verb]}` "
                             "on the first line of the cell." if verb in CELL_VERBS else
                             f"%%mlops {verb} is a line magic: write `%mlops {verb} ...` on a line of its own.")
        ns = PARSERS[verb].parse_args(args)
        try:
            return getattr(self, f"_{verb}")(ns, cell)
        except MlopsError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"mlops: cannot write the project's tracking state: {exc}") from None

    def _init(self, ns, _cell):
        s = self.tracker.configure(experiment=ns.experiment, tracking_uri=ns.tracking_uri)
        nb = self.tracker.notebook_path() or "(notebook path unknown: runs are tagged by project only)"
        print(f"mlops: tracking {nb} → experiment '{self.tracker.experiment}' in {s.tracking_uri} "
              f"({s.origin.get('tracking_uri')}) · project {s.project_root}")

    def _run(self, ns, cell):
        # reached only when the input transformer did not run (e.g. run_cell_magic called directly)
        opts = RunOptions(name=ns.name, metrics=ns.metrics, tags=dict(ns.tag), params=dict(ns.param),
                          models=ns.model)
        self.tracker.begin(cell, opts)
        self._nested = True
        try:
            result = self.shell.run_cell(cell, store_history=False)
        finally:
            self._nested = False
        self.tracker.finish(result)

    def _sweep(self, ns, cell):
        from IPython.display import Image, display

        from . import sweep
        from .sweep import live, view

        space = (sweep.from_mapping(self.shell.user_ns.get(ns.space_from), ns.space_from, ns.metric)
                 if ns.space_from else sweep.parse(ns.space, ns.metric))
        spec = sweep.SweepSpec(cell, space, ns.metric, ns.mode, ns.samples, ns.cpus_per_trial, ns.gpus_per_trial,
                               ns.concurrency, ns.scheduler, ns.address, ns.retries)
        plan = sweep.prepare(spec, self.shell.user_ns, self.shell.user_ns_hidden)  # bad input: no run recorded
        params = {f"space.{k}": t.describe() for k, t in space.items()}
        params.update(samples=spec.num_samples, trials=plan.total, metric=ns.metric, mode=ns.mode,
                      cpus_per_trial=ns.cpus_per_trial, gpus_per_trial=ns.gpus_per_trial,
                      concurrency=ns.concurrency or "auto", scheduler=ns.scheduler or "fifo", retries=ns.retries)
        rec = self.tracker.begin(cell, RunOptions(name=ns.name or "sweep", params=params,
                                                  tags={"mlops.kind": "sweep", "mlops.ray.nodes": len(plan.nodes)}))
        progress = view.Progress(total=plan.total)
        with self.tracker.unrecorded():  # updated every 0.5 s: the run keeps the final plot and summary
            handle = display(progress, display_id=True)
        # the sidebar's live trial table (MLflow only hears of a trial when it ends)
        table = live.ProgressFile(self.tracker.settings.state_dir, rec.key, self.tracker.notebook_path(),
                                  ns.name or "sweep", ns.metric, ns.mode, plan.total)

        def update(result):
            progress.result = result
            table.update(result, rec.run_id)
            with self.tracker.unrecorded():
                handle.update(progress)

        def ended(t):
            texts = {"trial/traceback.txt": t.error, "trial/output.txt": t.output}
            self.tracker.child(rec, f"trial-{t.number}", t.params, t.metrics, status=t.status,
                               start_ms=int(t.start * 1000), end_ms=int((t.end or t.start) * 1000),
                               tags={"mlops.node": t.node, "mlops.gpu_ids": t.gpu_ids, "mlops.attempts": t.attempts,
                                     "mlops.restarts": t.restarts, "mlops.stopped_early": t.stopped_early},
                               texts={k: v for k, v in texts.items() if v})

        try:
            result = sweep.execute(plan, on_update=update, on_trial_end=ended)
        except BaseException:
            table.finish(status="FAILED")
            raise
        update(result)
        table.finish(result, rec.run_id, status="KILLED" if result.interrupted else "FINISHED")
        best, df = result.best, view.frame(result)
        self.shell.user_ns.update(best_params=dict(best.params) if best else {}, sweep=df)
        if best:
            rec.params.update({f"best.{k}": v for k, v in best.params.items()})
            rec.metrics[f"best_{ns.metric}"] = best.metrics[ns.metric]
        png = view.parallel_plot(df, list(space), ns.metric)
        if png:
            display(Image(png))
        print(view.summary(result))
        if result.interrupted:
            raise KeyboardInterrupt  # the cell (and its run) ends interrupted, as any interrupted cell

    def _autotrack(self, ns, _cell):
        self._settings()
        self.tracker.autotrack = ns.state == "on"
        print(f"mlops: autotrack {ns.state}" + (": every code cell you run becomes a run in experiment "
                                                f"'{self.tracker.experiment}'" if ns.state == "on" else ""))

    def _runs(self, ns, _cell):
        from .tracking import query

        waiting = self._flushed()
        nb = None if ns.all else self.tracker.notebook_path()
        runs = query.list_runs(self.tracker.settings, notebook=nb, last=ns.last)
        header, rows = _render.runs_rows(runs)
        caption = f"{len(runs)} runs of {nb or 'this project'}"
        if waiting:
            caption += f" · {waiting} more still being written ({self.tracker.degraded or 'store busy'})"
        return _render.Table(header, rows, caption=caption)

    def _compare(self, ns, _cell):
        from .tracking import query

        self._flushed()
        ids = ns.run_ids
        if ns.last:
            if ids:
                raise MlopsError("give run ids or --last N, not both (e.g. `%mlops compare --last 2`).")
            ids = [r["run_id"] for r in query.list_runs(self.tracker.settings, self.tracker.notebook_path(),
                                                        last=ns.last)][::-1]
        cmp = query.compare_runs(self.tracker.settings, ids)
        header, rows, marks = _render.compare_rows(cmp)
        n = sum(marks)
        return _render.Table(header, rows, marks, caption=f"{n} of {len(rows)} values differ (marked ≠)")

    def _settings(self):
        if not self.tracker.configured:
            self.tracker.configure()
        return self.tracker.settings

    def _flushed(self) -> int:
        """Configured, and every finished cell's run written (briefly only, when the store is down):
        reading runs right after a cell must see it. Returns how many still wait."""
        self._settings()
        return self.tracker.flush(timeout=2 if self.tracker.degraded else 15)

    def _snapshot(self, ns, _cell):
        from . import data

        self._settings()
        bar = _render.ProgressLine(f"snapshot {ns.path}")
        snap = _render.in_worker(data.snapshot, ns.path, ns.message, ns.push, None, bar.update)
        for note in snap.notes:
            print(f"mlops: {note}")
        linked = self.tracker.attach_snapshot(snap.path, snap.md5, snap.pushed_to, snap.root)
        size = _render.human_bytes(snap.size) if snap.size is not None else "?"
        print(f"mlops: snapshot {snap.id} of {snap.path} ({size}, md5 {snap.md5})"
              + (" · unchanged since the last snapshot" if snap.unchanged else f" · committed {snap.rev[:8]}")
              + (f" · pushed to {snap.pushed_to}" if snap.pushed_to else "")
              + (" · linked to this cell's run" if linked else " · the next tracked run records it"))

    def _snapshots(self, ns, _cell):
        from . import data

        settings = self._settings()
        self._flushed()
        snaps = data.list_snapshots(ns.path, None, settings)
        header, rows = _render.snapshot_rows(snaps)
        return _render.Table(header, rows, caption=f"{len(snaps)} snapshots"
                             + (f" of {ns.path}" if ns.path else " in this project"))

    def _restore(self, ns, _cell):
        from . import data

        settings = self._settings()
        snap = data.restore(ns.path, ns.run, ns.rev, ns.force, None, settings)
        print(f"mlops: restored {snap.path} to snapshot {snap.id} (md5 {snap.md5}); its .dvc file now points "
              "there: snapshot again to keep working from it, or restore another revision.")


    def _reproduce(self, ns, _cell):
        from .tracking.reproduce import reproduce

        settings = self._settings()
        self._flushed()
        print(f"mlops: reproducing run {ns.run_id}: code, data and parameters as recorded (papermill)...")
        result = _render.in_worker(reproduce, settings, ns.run_id)
        for note in result.notes:
            print(f"mlops: {note}")
        header, rows, marks = _render.reproduction_rows(result)
        return _render.Table(header, rows, marks, caption=f"verdict: {result.verdict} · executed notebook: "
                                                          f"{result.notebook}")

    def _export(self, ns, _cell):
        from . import pipeline

        nb = ns.notebook or self.tracker.notebook_path()
        if not nb:
            raise UsageError("%mlops export: this kernel does not know its notebook's path; name it: "
                             "%mlops export path/to/notebook.ipynb --out DIR (save the notebook first).")
        pipe = pipeline.export(nb, ns.out)
        for warning in pipe.warnings:
            print(f"mlops: warning: {warning}")
        print(f"mlops: pipeline {pipe.name}: {len(pipe.steps)} steps ({', '.join(s['name'] for s in pipe.steps)}) "
              f"in {pipe.folder} · run it from a terminal: mlops pipeline run {ns.out}{pipe.serving_note()}")

    def _serve(self, ns, _cell):
        from .serving import generate_package

        out = generate_package(ns.model_uri, ns.out, name=ns.name, settings=self._settings())
        print(f"mlops: serving package for {ns.model_uri} in {out} · start it from a terminal: mlops serve run {out}")


def load(shell) -> None:
    tracker = Tracker(shell)
    magics = MlopsMagics(shell, tracker)
    shell.register_magics(magics)
    shell.events.register("pre_run_cell", magics.pre_run_cell)
    shell.events.register("post_run_cell", magics.post_run_cell)
    shell.input_transformers_cleanup.append(magics.strip_run_header)
    _wrap_outputs(shell, tracker)
    shell._mlops_magics = magics
    try:  # a kernel that died earlier in this project leaves no run RUNNING
        from . import config
        from .tracking import journal

        journal.finish_orphans(config.find_project_root() / config.STATE_DIR)
    except OSError:
        pass


def unload(shell) -> None:
    magics = getattr(shell, "_mlops_magics", None)
    if magics is None:
        return
    shell.events.unregister("pre_run_cell", magics.pre_run_cell)
    shell.events.unregister("post_run_cell", magics.post_run_cell)
    if magics.strip_run_header in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(magics.strip_run_header)
    for obj, name in ((shell.display_pub, "publish"), (shell.displayhook, "write_format_data")):
        if hasattr(getattr(obj, name), "_mlops_original"):
            setattr(obj, name, getattr(obj, name)._mlops_original)
    magics.tracker.close()
    del shell._mlops_magics


def _wrap_outputs(shell, tracker: Tracker) -> None:
    """Copy rich outputs (display() calls, inline figures, the cell's value) into the cell's run."""
    publish = shell.display_pub.publish

    def publish_and_keep(data, metadata=None, *args, **kwargs):
        tracker.capture_output({"output_type": "display_data", "data": data, "metadata": metadata or {}})
        return publish(data, metadata, *args, **kwargs)

    write = shell.displayhook.write_format_data

    def write_and_keep(format_dict, md_dict=None):
        tracker.capture_output({"output_type": "execute_result", "data": format_dict, "metadata": md_dict or {}})
        return write(format_dict, md_dict)

    publish_and_keep._mlops_original, write_and_keep._mlops_original = publish, write
    shell.display_pub.publish = publish_and_keep
    shell.displayhook.write_format_data = write_and_keep
