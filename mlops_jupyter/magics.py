"""``%mlops`` / ``%%mlops``: argument parsing and display only; the work happens in the core.

The verbs' arguments are declared once in ``commands`` (shared with the ``mlops`` command line), and so is
the hint each typed error gets here."""

from __future__ import annotations

import dataclasses
import functools
import os

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from . import _render, commands, config, quiet
from .commands import MAGIC, HelpShown, UsageProblem
from .errors import MlopsError
from .tracking.session import RunOptions, Tracker

VERBS = tuple(v.name.split()[0] for v in commands.verbs(MAGIC))
CELL_VERBS = {v.name: v for v in commands.verbs(MAGIC) if v.cell}
# a notebook holding sweep cells starts Ray in the background as the extension loads; "0" turns that off
PRESTART_ENV = "MLOPS_RAY_PRESTART"
_SKIP_AUTOTRACK = ("%mlops", "%%mlops", "%load_ext", "%reload_ext", "%unload_ext", "%pip", "%conda")


@functools.cache
def _parser():
    return commands.parser(MAGIC)  # built on first use: %load_ext stays fast


def _parse(words: list[str]):
    """The namespace for ``%mlops WORDS``; None when it only asked for help (printed)."""
    try:
        return _parser().parse_args(words)
    except HelpShown:
        return None
    except UsageProblem as exc:
        raise UsageError(str(exc)) from None


def _split(line: str) -> list[str]:
    try:
        return commands.split(line)
    except UsageProblem as exc:
        raise UsageError(f"%mlops: {exc}") from None


def _run_options(first: str) -> RunOptions | None:
    """The options of a ``%%mlops run ...`` line; None for any other magic line. Raises UsageError for a run
    line with bad arguments."""
    words = _split(first[len("%%mlops"):])
    if not words or words[0] != "run" or "-h" in words or "--help" in words:
        return None
    return _options(_parse(words))


def _options(ns) -> RunOptions:
    return RunOptions(name=ns.name, metrics=ns.metrics, tags=dict(ns.tag), params=dict(ns.param), models=ns.model)


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


def _compared(settings, run_ids: list) -> _render.Table:
    from .tracking import query

    header, rows, marks = _render.compare_rows(query.compare_runs(settings, run_ids))
    return _render.Table(header, rows, marks, caption=f"{sum(marks)} of {len(rows)} values differ (marked ≠)")


@magics_class
class MlopsMagics(Magics):
    def __init__(self, shell, tracker: Tracker):
        super().__init__(shell)
        self.tracker = tracker
        self._nested = False
        self._run_lines: dict = {}  # %%mlops line -> its RunOptions (None: not a valid run line)
        self._prestarting = False  # Ray started in the background: settled from this (main) thread once up

    def prestart_ray(self) -> str:
        """Start this machine's Ray in the background for a notebook that will sweep here: as the extension
        loads in a notebook that holds a local ``%%mlops sweep`` cell, and when the sidebar sees the user write
        one (a silent request of the labextension's). What happened: started, idle (started already, or RAY_ADDRESS
        names a cluster), off (MLOPS_RAY_PRESTART=0)."""
        if config.switched_off(PRESTART_ENV):
            return "off"
        from .sweep import runner  # imports nothing heavy; the prestart's thread imports Ray

        started = runner.prestart()
        self._prestarting = self._prestarting or started
        return "started" if started else "idle"

    # ---- the hooks that make ``%%mlops run`` and autotrack work ----------------------------
    def _header(self, raw: str):
        """For a ``%%mlops run ...`` cell: (options, body, magic line); None for any other cell, and for a run
        line with bad arguments (left to the cell magic, which reports it). Each line is parsed once: the hooks
        and the input transformer ask for every cell."""
        text = raw.lstrip("\n")
        if not text.startswith("%%mlops"):
            return None
        first, _, body = text.partition("\n")
        if first not in self._run_lines:
            if len(self._run_lines) > 256:
                self._run_lines.clear()
            try:
                self._run_lines[first] = _run_options(first)
            except UsageError:
                self._run_lines[first] = None
        opts = self._run_lines[first]
        return None if opts is None else (dataclasses.replace(opts), body, first)

    def strip_run_header(self, lines: list[str]) -> list[str]:
        """Input transformer: a valid ``%%mlops run`` cell executes as its plain body, so its
        exceptions, output and last value behave exactly as in an untracked cell."""
        if lines and lines[0].startswith("%%mlops") and self._header("".join(lines)) is not None:
            return lines[1:]
        return lines

    def pre_run_cell(self, info) -> None:
        if self._prestarting:
            from .sweep import runner

            self._prestarting = not runner.settle()
        if self._nested or getattr(info, "silent", False):
            return
        try:
            raw, cell_id = info.raw_cell, getattr(info, "cell_id", None)
            parsed = self._header(raw)
            if self.tracker.configured:
                self.tracker.note_cell(raw, cell_id)
                cell_id = self.tracker.cell_id_for(raw, cell_id)  # a stat when the frontend sent none
            count = _execution_count(self.shell, info)
            self.tracker.note_execution(count, cell_id, raw)
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
        words = _split(line)
        if words and words[0] in ("-h", "--help", "help"):
            print(commands.overview(MAGIC))
            return None
        if not words or words[0] not in VERBS:
            got = f"unknown verb {words[0]!r}" if words else "a verb is missing"
            raise UsageError(f"%mlops: {got}; use one of: {', '.join(VERBS)} (e.g. `%mlops runs --last 5`; "
                             "`%mlops?` lists what each does).")
        verb, asks_help = words[0], "-h" in words or "--help" in words
        if (verb in CELL_VERBS) != (cell is not None) and not asks_help:
            raise UsageError(f"%mlops {verb} is a cell magic: put `%%mlops {verb} ...` on the first line of the "
                             f"cell (`%mlops {verb} --help` shows its arguments)." if verb in CELL_VERBS else
                             f"%%mlops {verb} is a line magic: write `%mlops {verb} ...` on a line of its own.")
        ns = _parse(words)
        if ns is None:
            return None
        try:
            return getattr(self, "_" + ns.spec.name.replace(" ", "_"))(ns, cell)
        except UsageProblem as exc:
            raise UsageError(f"{commands.command(MAGIC, ns.spec)}: {exc}") from None
        except MlopsError as exc:
            raise UsageError(commands.explain(exc, MAGIC)) from None
        except OSError as exc:
            raise UsageError(f"mlops: cannot write the project's tracking state: {exc}") from None

    def _init(self, ns, _cell):
        s = self.tracker.configure(experiment=ns.experiment, tracking_uri=ns.tracking_uri)
        nb = self.tracker.notebook_path() or "(notebook path unknown: runs are tagged by project only)"
        print(f"mlops: tracking {nb} → experiment '{self.tracker.experiment}' in {s.tracking_uri} "
              f"({s.origin.get('tracking_uri')}) · project {s.project_root}")

    def _run(self, ns, cell):
        # reached only when the input transformer did not run (e.g. run_cell_magic called directly)
        self.tracker.begin(cell, _options(ns))
        self._nested = True
        try:
            result = self.shell.run_cell(cell, store_history=False)
        finally:
            self._nested = False
        self.tracker.finish(result)

    def _sweep(self, ns, cell):
        from IPython.display import Image, display

        from . import sweep
        from .sweep import tracked, view

        space = (sweep.from_mapping(self.shell.user_ns.get(ns.space_from), ns.space_from, ns.metric)
                 if ns.space_from else sweep.parse(ns.space, ns.metric))
        spec = sweep.SweepSpec(cell, space, ns.metric, ns.mode, ns.samples, ns.cpus_per_trial, ns.gpus_per_trial,
                               ns.concurrency, ns.scheduler, ns.address, ns.retries)
        recording = tracked.Recording(
            begin=lambda params, tags: self.tracker.begin(cell, RunOptions(name=ns.name or "sweep", params=params,
                                                                           tags=tags)),
            child=self.tracker.child,
            place=lambda: (self.tracker.settings.state_dir, self.tracker.notebook_path()))
        from . import _widgets

        shown: dict = {}

        def start(total):
            view.warm()  # the end's DataFrame and plot imports, while the trials run
            shown["view"] = _widgets.SweepView(total)
            with self.tracker.unrecorded():  # live: the run keeps the final plot and summary
                shown["handle"] = display(shown["view"], display_id=True)

        def progress(result):
            shown["view"].update(result)  # the widget changes in place; its text is re-sent once, at the end

        result = tracked.run(spec, self.shell.user_ns, self.shell.user_ns_hidden, recording, name=ns.name,
                             on_progress=progress, on_start=start)
        if "handle" in shown:
            with self.tracker.unrecorded():  # a saved notebook's text/plain and text/html: the final table
                shown["handle"].update(shown["view"])
        png = view.parallel_plot(self.shell.user_ns["sweep"], list(space), ns.metric)
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

    def _scope(self, ns):
        """(settings, notebook) a listing reads: --project's store or this notebook's; --notebook, this
        notebook (the default, unless --all or --project), or every run (None)."""
        waiting = self._flushed()
        settings = commands.project_settings(ns.project) if ns.project else self.tracker.settings
        if ns.notebook:
            return settings, os.path.abspath(ns.notebook), waiting
        return settings, (None if ns.all or ns.project else self.tracker.notebook_path()), waiting

    def _runs(self, ns, _cell):
        from .tracking import query

        settings, nb, waiting = self._scope(ns)
        runs = query.list_runs(settings, notebook=nb, last=ns.last, kind=ns.kind, children=True)
        if ns.json:
            return runs
        from . import _widgets

        caption = (f"{len(runs)} {ns.kind + ' ' if ns.kind else ''}runs of {nb or 'this project'} · open them in the "
                   f"MLflow UI: {settings.where_to_look()}")
        if waiting:
            caption += f" · {waiting} more still being written ({self.tracker.degraded or 'store busy'})"
        return _widgets.RunsTable(runs, caption, compare=lambda ids: _compared(settings, ids))

    def _compare(self, ns, _cell):
        settings, nb, _ = self._scope(ns)
        return _compared(settings, commands.compared(ns, settings, nb))

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
        with self.tracker.reads.paused():  # hashing it is not the cell reading it (a snapshot links itself)
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
        with self.tracker.reads.paused():  # checking the data before putting it back is not the cell reading it
            snap = data.restore(ns.path, ns.run, ns.rev, ns.force, None, settings)
        print(f"mlops: restored {snap.path} to snapshot {snap.id} (md5 {snap.md5}); its .dvc file now points "
              "there: snapshot again to keep working from it, or restore another revision.")

    def _reproduce(self, ns, _cell):
        from .tracking.reproduce import reproduce

        settings = commands.project_settings(ns.project) if ns.project else self._settings()
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
            raise UsageProblem("this kernel does not know its notebook's path; name it: "
                               "%mlops export path/to/notebook.ipynb (save the notebook first).")
        out = ns.out or pipeline.default_folder(nb)
        pipe = pipeline.check(nb, ns.out) if ns.check else pipeline.export(nb, out, ns.target, ns.image)
        for warning in pipe.warnings:
            print(f"mlops: warning: {warning}")
        if ns.check:
            print(f"mlops: {commands.checked(pipe)}")
            return None
        print(f"mlops: {commands.exported(pipe)} · run it from a terminal: mlops pipeline run {pipe.folder}"
              + (f" · Kubeflow: {pipe.kfp}" if pipe.kfp else ""))
        drawn = pipe.folder / pipeline.PICTURE
        return _render.Picture(drawn.read_text(), f"(the pipeline's steps, drawn in {drawn})")

    def _pipeline_run(self, ns, _cell):
        from IPython.display import display

        from . import _widgets, pipeline

        shown = _widgets.PipelineView(pipeline.load(ns.dir), pipeline.status(ns.dir))
        handle = display(shown, display_id=True)
        try:
            result = pipeline.run(ns.dir, params=ns.param, from_step=ns.from_step, force=ns.force, echo=shown.say,
                                  on_step=shown.step, address=ns.address, storage=ns.storage,
                                  max_retries=ns.max_retries)
        finally:
            handle.update(shown)  # a saved notebook's text/plain and text/html: how the run left each step
        for note in result.notes:
            print(f"mlops: {note}")
        print(f"mlops: {result.summary()}")
        if ns.register and result.ok:
            from . import config, registry

            for _step, name, run in pipeline.fitted(ns.dir, result):
                print(f"mlops: {_render.moved_text(registry.register(config.resolve(ns.dir), run, name, env=ns.env))}")

    def _pipeline_status(self, ns, _cell):
        from . import pipeline

        rows = pipeline.status(ns.dir)
        stale = pipeline.outdated(ns.dir)
        return _render.Table(["step", "state", "why"], [list(r) for r in rows],
                             caption=f"the export is outdated: {stale}; export it again" if stale else "")

    def _serve_generate(self, ns, _cell):
        from .serving import generate_package, model_of_run

        settings = commands.project_settings(ns.project) if ns.project else self._settings()
        uri = ns.model_uri or model_of_run(settings, ns.run)
        out = generate_package(uri, ns.out, name=ns.name, settings=settings, environment=ns.env)
        print(f"mlops: serving package for {uri} in {out} · start it from a terminal: mlops serve run {out}")

    def _register(self, ns, _cell):
        from . import registry

        print(f"mlops: {_render.moved_text(registry.register(self._settings(), ns.run, ns.model, env=ns.env))}")

    def _promote(self, ns, _cell):
        from . import registry
        from .errors import GateFailed

        try:
            moved = registry.promote(self._settings(), ns.ref, ns.to, force=commands.forced(ns), env=ns.env)
        except GateFailed as exc:
            print(_render.failed_gates_text(exc))
            raise
        print(f"mlops: {_render.moved_text(moved)}")

    def _rollback(self, ns, _cell):
        from . import registry

        print(f"mlops: {_render.moved_text(registry.rollback(self._settings(), ns.name, ns.env))}")

    def _models(self, ns, _cell):
        from . import registry

        commands.history_args(ns)
        if ns.history:
            at = registry.parse_time(ns.at) if ns.at else None
            hist = registry.history(self._settings(), ns.name, env=ns.env, at=at)
            return _render.Table(*_render.history_rows(hist), caption=_render.holders_text(hist, at))
        return _render.Table(*_render.model_rows(registry.models(self._settings())))


    def _report(self, ns, _cell):
        from . import config, reports

        commands.report_args(ns)
        target = ns.target
        settings = config.resolve(target) if target and os.path.isdir(target) else self._settings()
        made = reports.build(settings, target, ns.baseline, ns.out, env=ns.env, log=ns.log)
        if ns.comment:
            print(f"mlops: {reports.comment(made, ns.out, dry_run=ns.dry_run)}")
        return _render.Document(made.html(), made.markdown())


    def _monitor(self, ns, _cell):
        from . import monitor
        from .monitor import report, rules

        mode = commands.monitor_mode(ns)
        settings = monitor.environment_settings(self._settings(), ns.env)
        if mode == "reference":
            print(f"mlops: {monitor.reference_line(monitor.reference(settings, ns.target, model=ns.model, data=ns.data))}")
            return None
        if mode == "rules":
            text = rules.alert_rules(ns.hold)
            if ns.out:
                with open(ns.out, "w") as fh:
                    fh.write(text)
                print(f"mlops: alert rules in {ns.out}")
                return None
            print(text, end="")
            return None
        check = monitor.check(settings, ns.source, model=ns.model, run=ns.run, since=ns.since, window=ns.window,
                              stattest=ns.stattest)
        if ns.report:
            with open(ns.report, "w") as fh:
                fh.write(report.page(check))
        if ns.json:
            return check.as_dict()
        return _render.Document(report.html_part(check), report.text(check))

    def _retrain(self, ns, _cell):
        from . import config, retrain

        folder = os.path.abspath(ns.dir)
        outcome = retrain.retrain(config.resolve(folder), folder, data=ns.data, promote_to=ns.promote_to, env=ns.env,
                                  if_drift=ns.if_drift, log=ns.log,
                                  echo=lambda *words: print("mlops:", *words))
        print(f"mlops: {outcome.summary()}")


MlopsMagics.mlops.__doc__ = commands.overview(MAGIC)


def load(shell) -> None:
    quiet.quiet_engines()
    tracker = Tracker(shell)
    magics = MlopsMagics(shell, tracker)
    shell.register_magics(magics)
    shell.events.register("pre_run_cell", magics.pre_run_cell)
    shell.events.register("post_run_cell", magics.post_run_cell)
    shell.input_transformers_cleanup.append(magics.strip_run_header)
    _wrap_outputs(shell, tracker)
    shell._mlops_magics = magics
    if tracker.notebook.sweeps_here():
        magics.prestart_ray()
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
