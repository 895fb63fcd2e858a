import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISignal, Signal } from '@lumino/signaling';

import { postAPI, requestAPI, requestReply } from './request';
import {
  ICompare,
  IGenerated,
  IPipeline,
  IRestored,
  IRun,
  IRunList,
  IServing,
  ISnapshots,
  IStatus,
  ISweep,
  IValidateCell,
  IValidation,
  LIVE_REFRESH_MS,
  REFRESH_MS
} from './tokens';

/** What the runs list shows for the current notebook. */
export interface IRunsState {
  path: string | null;
  data: IRunList | null;
  error: string | null;
}

/**
 * The one object that talks to the server extension. It follows the current notebook, polls its
 * runs (If-None-Match: an unchanged list costs a 304), and wraps every other route.
 */
export class MlopsModel {
  constructor(private readonly tracker: INotebookTracker) {
    tracker.currentChanged.connect(this.onCurrentChanged, this);
    document.addEventListener('visibilitychange', this.onVisibility);
    this.onCurrentChanged();
  }

  /** Emitted when the runs, the status or the current notebook changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted after every poll, changed or not (cell badges re-attach to cells rendered since). */
  get polled(): ISignal<this, void> {
    return this._polled;
  }

  get runs(): IRunsState {
    return this._runs;
  }

  get status(): IStatus | null {
    return this._status;
  }

  get path(): string | null {
    return this.tracker.currentWidget?.context.path ?? null;
  }

  get notebook(): NotebookPanel | null {
    return this.tracker.currentWidget;
  }

  /** Timings of the last forced refresh, for the speed test: fetch, then until rows are in the DOM. */
  readonly timing = { started: 0, fetchMs: 0 };

  /** Re-read the runs; `force` skips the ETag (a user's click, the speed test). */
  async refresh(force = false): Promise<void> {
    const path = this.path;
    if (!path) {
      this.setRuns({ path: null, data: null, error: null });
      return;
    }
    if (this.inFlight) {
      this.again = this.again || force || this.inFlight !== path;
      return;
    }
    this.inFlight = path;
    const started = performance.now();
    try {
      const etag = !force && this.etagPath === path ? this.etag : null;
      const reply = await requestReply<IRunList>(
        'runs',
        { path },
        etag ? { headers: { 'If-None-Match': etag } } : {}
      );
      if (force) {
        this.timing.started = started;
        this.timing.fetchMs = performance.now() - started;
      }
      if (this.path !== path) {
        // the user switched notebooks while we waited: this list is not the current one's
      } else if (reply.status !== 304 && reply.data) {
        this.etag = reply.etag;
        this.etagPath = path;
        // a poll keeps the objects of runs that did not change, so only changed rows re-render
        // (a live cell's metrics arrive every second); a forced refresh redraws everything
        const data = force ? reply.data : keepUnchanged(this._runs.data, reply.data);
        this.setRuns({ path, data, error: null });
      } else if (this._runs.error) {
        this.setRuns({ ...this._runs, error: null });
      }
    } catch (error) {
      this.etag = null;
      if (this.path === path) {
        this.setRuns({ path, data: null, error: (error as Error).message });
      }
    } finally {
      this.inFlight = null;
    }
    if (this.again || this.path !== path) {
      this.again = false;
      void this.refresh(true); // asked again while we waited, or the user switched notebooks
    }
  }

  /** GET status for the current notebook (capabilities, MLflow UI), cached per notebook. */
  async loadStatus(): Promise<void> {
    const path = this.path;
    if (!path || this.statusPath === path) {
      return;
    }
    this.statusPath = path;
    try {
      this._status = await requestAPI<IStatus>('status', { path });
    } catch {
      this.statusPath = null; // an older server without the route: every panel stays enabled
      this._status = null;
    }
    this._changed.emit();
  }

  compare(ids: string[]): Promise<ICompare> {
    return requestAPI<ICompare>('compare', { ids: ids.join(','), path: this.need() });
  }

  snapshots(): Promise<ISnapshots> {
    return requestAPI<ISnapshots>('snapshots', { path: this.need() });
  }

  restore(target: string, rev: string, force: boolean): Promise<IRestored> {
    return postAPI<IRestored>('restore', { path: this.need(), target, rev, force });
  }

  sweeps(): Promise<{ sweeps: ISweep[] }> {
    return requestAPI<{ sweeps: ISweep[] }>('sweeps', { path: this.need() });
  }

  validate(cells: IValidateCell[]): Promise<IValidation> {
    return postAPI<IValidation>('pipeline/validate', { cells });
  }

  pipeline(out: string): Promise<IPipeline> {
    return requestAPI<IPipeline>('pipeline', { path: this.need(), out });
  }

  exportPipeline(out: string): Promise<{ folder: string; steps: string[] }> {
    return postAPI('pipeline/export', { path: this.need(), out });
  }

  runPipeline(out: string, force: boolean): Promise<{ folder: string; started: number }> {
    return postAPI('pipeline/run', { path: this.need(), out, force });
  }

  generateServing(runId: string, out: string, name: string): Promise<IGenerated> {
    const body: Record<string, string> = { path: this.need(), run_id: runId, out };
    if (name) {
      body.name = name;
    }
    return postAPI<IGenerated>('serving/generate', body);
  }

  serving(out: string): Promise<IServing> {
    return requestAPI<IServing>('serving', { path: this.need(), out });
  }

  buildServing(out: string, base: string): Promise<{ folder: string; started: number }> {
    const body: Record<string, string> = { path: this.need(), out };
    if (base) {
      body.base = base;
    }
    return postAPI('serving/build', body);
  }

  /** The folder beside the notebook a pipeline (or serving package) goes to by default. */
  defaultFolder(suffix: string): string {
    const path = this.path ?? '';
    const slash = path.lastIndexOf('/');
    const stem = path.slice(slash + 1).replace(/\.ipynb$/, '');
    return `${slash >= 0 ? path.slice(0, slash + 1) : ''}${stem}-${suffix}`;
  }

  /** Whether something runs now, so polls go faster. */
  isLive(): boolean {
    const busy = this.notebook?.sessionContext.kernelDisplayStatus === 'busy';
    return busy || !!this._runs.data?.runs.some((run: IRun) => run.status === 'RUNNING');
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    document.removeEventListener('visibilitychange', this.onVisibility);
    Signal.clearData(this);
  }

  private need(): string {
    const path = this.path;
    if (!path) {
      throw new Error('Open a notebook first.');
    }
    return path;
  }

  private setRuns(state: IRunsState): void {
    this._runs = state;
    this._changed.emit();
  }

  private onCurrentChanged(): void {
    this.etag = null;
    this._runs = { path: this.path, data: null, error: null };
    this._changed.emit();
    void this.loadStatus();
    this.schedule(0);
  }

  private readonly onVisibility = (): void => {
    // a background tab polls nothing; coming back refreshes at once
    this.schedule(document.hidden ? -1 : 0);
  };

  private schedule(delay: number): void {
    window.clearTimeout(this.timer);
    if (delay < 0) {
      return;
    }
    this.timer = window.setTimeout(async () => {
      if (this.path && !document.hidden) {
        await this.refresh();
        this._polled.emit();
      }
      if (!document.hidden) {
        this.schedule(this.isLive() ? LIVE_REFRESH_MS : REFRESH_MS);
      }
    }, delay);
  }

  private readonly _changed = new Signal<this, void>(this);
  private readonly _polled = new Signal<this, void>(this);
  private _runs: IRunsState = { path: null, data: null, error: null };
  private _status: IStatus | null = null;
  private statusPath: string | null = null;
  private etag: string | null = null;
  private etagPath: string | null = null;
  private inFlight: string | null = null;
  private again = false;
  private timer = 0;
}

/** ``next`` with each run that equals the one in ``prev`` replaced by that earlier object. */
function keepUnchanged(prev: IRunList | null, next: IRunList): IRunList {
  if (!prev) {
    return next;
  }
  const before = new Map(prev.runs.map(run => [run.run_id, run]));
  const runs = next.runs.map(run => {
    const old = before.get(run.run_id);
    return old && JSON.stringify(old) === JSON.stringify(run) ? old : run;
  });
  return { ...next, runs };
}
