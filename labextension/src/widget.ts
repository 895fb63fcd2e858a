import { INotebookTracker } from '@jupyterlab/notebook';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './request';
import { IRun, IRunList, REFRESH_MS } from './tokens';

/** A DOM element with a class and optional text (textContent only: run data is never parsed as HTML). */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function formatValue(value: number): string {
  return Number.isInteger(value) ? String(value) : String(+value.toPrecision(4));
}

function formatTime(ms: number | null): string {
  return ms ? new Date(ms).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' }) : '';
}

/**
 * The MLOps sidebar: the current notebook's tracked runs, newest first.
 * Polls the server while shown; hidden, it costs nothing.
 */
export class RunsPanel extends Widget {
  constructor(private readonly tracker: INotebookTracker) {
    super();
    this.addClass('mlops-panel');
    this.node.dataset.testid = 'mlops-sidebar';
    this.node.append(
      el('div', 'mlops-header', 'Tracked runs'),
      this.subtitle,
      this.body,
      this.footer
    );
    tracker.currentChanged.connect(() => void this.refresh(), this);
  }

  /** Re-read the runs of the current notebook (no-op while hidden). */
  async refresh(): Promise<void> {
    if (!this.isVisible || this.inFlight) {
      return;
    }
    const path = this.tracker.currentWidget?.context.path ?? null;
    if (!path) {
      this.show_({ kind: 'message', text: 'Open a notebook to see its tracked runs.' }, '');
      return;
    }
    this.inFlight = true;
    try {
      const data = await requestAPI<IRunList>('runs', { path });
      this.show_({ kind: 'runs', data }, path);
    } catch (error) {
      this.show_({ kind: 'error', text: (error as Error).message }, path);
    } finally {
      this.inFlight = false;
    }
    if ((this.tracker.currentWidget?.context.path ?? null) !== path) {
      void this.refresh(); // the user switched notebooks while we waited: don't leave the old list up
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.refresh();
    this.timer = window.setInterval(() => void this.refresh(), REFRESH_MS);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    window.clearInterval(this.timer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  private show_(view: View, path: string): void {
    // re-render only on change: a poll that finds nothing new must not reset scroll or selection
    const key = JSON.stringify([view, path]);
    if (key === this.lastKey) {
      return;
    }
    this.lastKey = key;
    this.subtitle.textContent = path;
    this.body.replaceChildren();
    this.footer.replaceChildren();
    this.node.dataset.state = view.kind === 'runs' && !view.data.runs.length ? 'empty' : view.kind;
    if (view.kind === 'message') {
      this.body.append(el('div', 'mlops-message', view.text));
    } else if (view.kind === 'error') {
      this.body.append(el('div', 'mlops-error', view.text));
    } else {
      this.renderRuns(view.data);
    }
  }

  private renderRuns(data: IRunList): void {
    if (!data.runs.length) {
      this.body.append(el('div', 'mlops-empty', 'No tracked runs yet: run a cell with %%mlops run'));
    } else {
      const table = el('table', 'mlops-runs');
      const head = table.createTHead().insertRow();
      for (const name of ['Status', 'Run / cell', 'Metrics']) {
        head.append(el('th', '', name));
      }
      const rows = table.createTBody();
      for (const run of data.runs) {
        rows.append(this.renderRun(run));
      }
      this.body.append(table);
    }
    // long store paths: one ellipsized line; the full command is in the tooltip and copies whole
    const ui = el('code', 'mlops-ui', data.ui);
    ui.title = data.ui;
    this.footer.append(el('span', '', 'Open in MLflow: '), ui);
  }

  private renderRun(run: IRun): HTMLTableRowElement {
    const row = el('tr', 'mlops-run-row');
    row.dataset.runId = run.run_id;
    row.title = `run ${run.run_id}`;

    const status = el('span', `mlops-status mlops-status-${run.status.toLowerCase()}`, run.status);
    const name = el('div', 'mlops-run-name', run.run_name ?? run.run_id.slice(0, 8));
    // cell ids are UUID-like: 8 characters tell cells apart; the execution count is what the user sees
    const parts = [
      run.cell_id ? `cell ${run.cell_id.slice(0, 8)}` : '',
      run.execution_count === null ? '' : `[${run.execution_count}]`
    ];
    const cell = el('div', 'mlops-run-cell', parts.filter(Boolean).join(' '));
    const started = el('div', 'mlops-run-time', formatTime(run.start_time));
    const metrics = el('td', 'mlops-run-metrics');
    for (const [key, value] of Object.entries(run.metrics).sort()) {
      metrics.append(el('span', 'mlops-metric', `${key}=${formatValue(value)}`));
    }

    const statusCell = el('td', '');
    statusCell.append(status);
    const runCell = el('td', '');
    runCell.append(name, cell, started);
    row.append(statusCell, runCell, metrics);
    return row;
  }

  private readonly subtitle = el('div', 'mlops-subtitle');
  private readonly body = el('div', 'mlops-body');
  private readonly footer = el('div', 'mlops-footer');
  private timer = 0;
  private inFlight = false;
  private lastKey = '';
}

type View =
  | { kind: 'message'; text: string }
  | { kind: 'error'; text: string }
  | { kind: 'runs'; data: IRunList };
