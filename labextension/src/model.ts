import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { postAPI, requestAPI, requestReply } from './request';
import { pollFrequency } from './poll';
import { keepUnchanged } from './rows';
import {
  ICompare,
  IGenerated,
  IModels,
  IMonitor,
  IMoved,
  IPipeline,
  IReportWritten,
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

/** How often to re-read the store (ms): while nothing runs, and while something does (Settings > MLOps). */
export interface IIntervals {
  idle: number;
  live: number;
}

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
    // backs off while the server fails, stands by while the page is hidden, ticks again when it shows
    this.poll = new Poll({
      factory: () => this.tick(),
      frequency: pollFrequency(REFRESH_MS),
      name: 'mlops-jupyter:runs',
      standby: 'when-hidden'
    });
    tracker.currentChanged.connect(this.onCurrentChanged, this);
    document.addEventListener('visibilitychange', this.onVisibility);
    this.onCurrentChanged();
  }

  /** The refresh intervals, from the settings; a change applies from the next read. */
  get intervals(): IIntervals {
    return this._intervals;
  }

  set intervals(value: IIntervals) {
    this._intervals = { ...value };
    void this.poll.refresh();
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

  /** Whether a refresh the user asked for is on its way: the refresh button is busy until its rows are drawn. */
  get refreshing(): boolean {
    return this._refreshing;
  }

  /** Re-read the runs; `force` skips the ETag (a user's click, the speed test). */
  async refresh(force = false): Promise<void> {
    const path = this.path;
    if (!path) {
      this._refreshing = false;
      this.setRuns({ path: null, data: null, error: null });
      return;
    }
    if (force && !this._refreshing) {
      this._refreshing = true;
      this._changed.emit();
    }
    if (this.inFlight) {
      this.again = this.again || force || this.inFlight !== path;
      return;
    }
    this.inFlight = path;
    try {
      const etag = !force && this.etagPath === path ? this.etag : null;
      const reply = await requestReply<IRunList>('runs', { path }, etag ? { headers: { 'If-None-Match': etag } } : {});
      if (force) {
        this._refreshing = false; // cleared in the same redraw as the rows
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
      } else if (this._runs.error || force) {
        this.setRuns({ ...this._runs, error: null });
      }
    } catch (error) {
      this.etag = null;
      if (force) {
        this._refreshing = false;
      }
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

  /** `address`: run the steps as Ray tasks on that cluster (ray://head:10001, host:6379 or auto). */
  runPipeline(out: string, force: boolean, address = ''): Promise<{ folder: string; started: number }> {
    const body: Record<string, unknown> = { path: this.need(), out, force };
    if (address.trim()) {
      body.address = address.trim();
    }
    return postAPI('pipeline/run', body);
  }

  retrainPipeline(out: string): Promise<{ folder: string; started: number }> {
    return postAPI('pipeline/retrain', { path: this.need(), out });
  }

  reportPipeline(out: string, baseline: string): Promise<IReportWritten> {
    return postAPI<IReportWritten>('pipeline/report', { path: this.need(), out, baseline });
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

  models(name?: string): Promise<IModels> {
    const query: Record<string, string> = { path: this.need() };
    if (name) {
      query.name = name;
    }
    return requestAPI<IModels>('models', query);
  }

  monitor(source: string, since: string, window: string): Promise<IMonitor> {
    const query: Record<string, string> = { path: this.need(), since, window };
    if (source) {
      query.source = source;
    }
    return requestAPI<IMonitor>('monitor', query);
  }

  promote(ref: string, to: string): Promise<IMoved> {
    return postAPI<IMoved>('models/promote', { path: this.need(), ref, to });
  }

  rollback(name: string, env: string): Promise<IMoved> {
    return postAPI<IMoved>('models/rollback', { path: this.need(), name, env });
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
    this.poll.dispose();
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
    void this.poll.refresh();
  }

  private readonly onVisibility = (): void => {
    // coming back to the page reads at once rather than at the poll's next tick
    if (!document.hidden) {
      void this.poll.refresh();
    }
  };

  /** One poll: the runs, then the pace of the next (a failure rejects, so the poll backs off). */
  private async tick(): Promise<void> {
    if (this.path) {
      await this.refresh();
      this._polled.emit();
    }
    const interval = this.isLive() ? this._intervals.live : this._intervals.idle;
    if (this.poll.frequency.interval !== interval) {
      this.poll.frequency = pollFrequency(interval);
    }
    if (this._runs.error) {
      throw new Error(this._runs.error);
    }
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
  private _refreshing = false;
  private _intervals: IIntervals = { idle: REFRESH_MS, live: LIVE_REFRESH_MS };
  private readonly poll: Poll;
}
