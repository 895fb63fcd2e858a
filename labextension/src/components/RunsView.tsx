import * as React from 'react';

import { MlopsModel } from '../model';
import { cellInfos, ICellInfo } from '../notebook';
import { IRun } from '../tokens';
import { CompareView } from './CompareView';
import { ErrorLine, formatShortTime, formatTime, formatValue, StatusBadge } from './common';

export interface IRunsViewProps {
  model: MlopsModel;
  /** Scroll the notebook to the run's cell and select it. */
  onReveal: (run: IRun) => void;
  /** Open the serving form for the run's model. */
  onServe?: (run: IRun) => void;
  /** A run to bring into view (a cell badge was clicked). */
  focusRun?: string | null;
}

/** Runs a cell's group shows before a "show all" (a cell re-run 500 times is mostly history). */
const GROUP_LIMIT = 25;

interface IGroup {
  key: string;
  cellId: string | null;
  runs: IRun[];
}

/** Runs grouped by cell, groups ordered by their newest run (the list is newest first). */
function groupByCell(runs: IRun[]): IGroup[] {
  const groups = new Map<string, IGroup>();
  for (const run of runs) {
    const key = run.cell_id ?? run.cell_key ?? `run:${run.run_id}`;
    let group = groups.get(key);
    if (!group) {
      group = { key, cellId: run.cell_id, runs: [] };
      groups.set(key, group);
    }
    group.runs.push(run);
  }
  return Array.from(groups.values());
}

function cellLabel(group: IGroup, info: ICellInfo | undefined): { count: string; text: string } {
  const count = info ? info.executionCount : group.runs[0].execution_count;
  const text = info
    ? info.firstLine || '(empty cell)'
    : group.cellId
      ? `cell ${group.cellId.slice(0, 8)} (not in this notebook now)`
      : 'no cell recorded';
  // a running cell has no execution count yet: Lab shows [*], so do we
  const running = group.runs[0].status === 'RUNNING';
  return { count: `[${count ?? (running ? '*' : ' ')}]`, text };
}

/** The runs panel: this notebook's runs by cell, a checkbox per run to compare two or more. */
export function RunsView(props: IRunsViewProps): JSX.Element {
  const { model } = props;
  const { data, error, path } = model.runs;
  const [selected, setSelected] = React.useState<string[]>([]);
  const [expanded, setExpanded] = React.useState<string[]>([]);
  const groups = React.useMemo(() => groupByCell(data?.runs ?? []), [data]);
  const infos = cellInfos(model.notebook);
  const body = React.useRef<HTMLDivElement>(null);

  React.useEffect(() => {
    setSelected([]);
    setExpanded([]);
  }, [path]);

  React.useEffect(() => {
    if (props.focusRun) {
      body.current?.querySelector(`[data-run-id="${CSS.escape(props.focusRun)}"]`)?.scrollIntoView({ block: 'center' });
    }
  }, [props.focusRun]);

  // stable, so a refresh re-renders only the rows whose run changed (RunRow is memoized)
  const toggle = React.useCallback(
    (runId: string) => setSelected(ids => (ids.includes(runId) ? ids.filter(id => id !== runId) : [...ids, runId])),
    []
  );

  if (!path) {
    return <div className="mlops-message">Open a notebook to see its tracked runs.</div>;
  }
  const runs = data?.runs ?? [];
  return (
    <div className="mlops-runs-view">
      <div className="mlops-toolbar">
        <span className="mlops-toolbar-text">
          {data
            ? `${runs.length} run${runs.length === 1 ? '' : 's'} · ${groups.length} cell${groups.length === 1 ? '' : 's'}`
            : error
              ? ''
              : 'loading…'}
        </span>
        {selected.length > 0 && (
          <button type="button" className="mlops-button mlops-link-button" onClick={() => setSelected([])}>
            clear selection ({selected.length})
          </button>
        )}
        <button
          type="button"
          className={`mlops-button${model.refreshing ? ' mlops-busy' : ''}`}
          data-testid="mlops-refresh"
          title="Re-read the runs now"
          aria-busy={model.refreshing}
          onClick={() => void model.refresh(true)}
        >
          ↻
        </button>
      </div>
      <ErrorLine error={error} />
      {selected.length === 1 && <div className="mlops-hint">Select one more run to compare.</div>}
      {selected.length >= 2 && <CompareView model={model} ids={selected} onClose={() => setSelected([])} />}
      <div className="mlops-body" ref={body}>
        {data && !runs.length && <div className="mlops-empty">No tracked runs yet: run a cell with %%mlops run</div>}
        {groups.map(group => {
          const info = group.cellId ? infos.get(group.cellId) : undefined;
          const label = cellLabel(group, info);
          const open = expanded.includes(group.key) || group.runs.length <= GROUP_LIMIT;
          // a run to focus (a cell badge) or a selected run is never hidden behind "show all"
          const shown = open
            ? group.runs
            : group.runs.filter(
                (run, i) => i < GROUP_LIMIT || run.run_id === props.focusRun || selected.includes(run.run_id)
              );
          return (
            <section className="mlops-cell-group" key={group.key} data-cell-id={group.cellId ?? ''}>
              <button
                type="button"
                className="mlops-cell-label"
                disabled={!info}
                title={info ? 'Go to this cell' : 'This cell is not in the open notebook'}
                onClick={() => props.onReveal(group.runs[0])}
              >
                <span className="mlops-cell-count">{label.count}</span>
                <span className="mlops-cell-source">{label.text}</span>
                <span className="mlops-cell-nruns">{group.runs.length}</span>
              </button>
              <ul className="mlops-run-list">
                {shown.map(run => (
                  <RunRow
                    key={run.run_id}
                    run={run}
                    checked={selected.includes(run.run_id)}
                    focused={props.focusRun === run.run_id}
                    onToggle={toggle}
                    onReveal={props.onReveal}
                    onServe={props.onServe}
                  />
                ))}
              </ul>
              {shown.length < group.runs.length && (
                <button
                  type="button"
                  className="mlops-link-button mlops-show-all"
                  onClick={() => setExpanded(keys => [...keys, group.key])}
                >
                  show all {group.runs.length} runs of this cell
                </button>
              )}
            </section>
          );
        })}
      </div>
      {data && (
        <div className="mlops-footer">
          {data.ui_url ? (
            <a href={data.ui_url} target="_blank" rel="noopener noreferrer">
              Open the MLflow UI ↗
            </a>
          ) : (
            <>
              <span>Open in MLflow: </span>
              <code className="mlops-ui" title={data.ui}>
                {data.ui}
              </code>
            </>
          )}
        </div>
      )}
    </div>
  );
}

interface IRunRowProps {
  run: IRun;
  checked: boolean;
  focused: boolean;
  onToggle: (runId: string) => void;
  onReveal: (run: IRun) => void;
  onServe?: (run: IRun) => void;
}

const RunRow = React.memo(function RunRow(props: IRunRowProps): JSX.Element {
  const { run } = props;
  const name = run.run_name ?? run.run_id.slice(0, 8);
  const params = Object.entries(run.params);
  const metrics = Object.entries(run.metrics).sort(([a], [b]) => (a < b ? -1 : 1));
  return (
    <li
      onClick={event => {
        // the whole row goes to the cell; its checkbox, link and buttons keep their own meaning
        if (!(event.target as HTMLElement).closest('input, a, button')) {
          props.onReveal(run);
        }
      }}
      className={`mlops-run-row${props.checked ? ' mlops-selected' : ''}${props.focused ? ' mlops-focused' : ''}`}
      data-run-id={run.run_id}
      title={`run ${run.run_id}`}
    >
      <input
        type="checkbox"
        className="mlops-run-check"
        checked={props.checked}
        aria-label={`compare run ${name}`}
        onChange={() => props.onToggle(run.run_id)}
      />
      <div className="mlops-run-main">
        <div className="mlops-run-head">
          <StatusBadge status={run.status} />
          <button type="button" className="mlops-run-name" onClick={() => props.onReveal(run)} title="Go to its cell">
            {name}
          </button>
          {run.kind && <span className="mlops-kind">{run.kind}</span>}
          <StateChips run={run} />
          <span className="mlops-run-time" title={formatTime(run.start_time)}>
            {formatShortTime(run.start_time)}
          </span>
        </div>
        {metrics.length > 0 && (
          <div className="mlops-run-metrics">
            {metrics.map(([key, value]) => (
              <span className="mlops-metric" key={key}>{`${key}=${formatValue(value)}`}</span>
            ))}
          </div>
        )}
        {params.length > 0 && (
          <div className="mlops-run-params" title={params.map(([k, v]) => `${k}=${v}`).join('\n')}>
            {params.map(([k, v]) => `${k}=${v}`).join(' · ')}
          </div>
        )}
      </div>
      <div className="mlops-run-actions">
        {run.ui_url && (
          <a
            className="mlops-button"
            href={run.ui_url}
            target="_blank"
            rel="noopener noreferrer"
            title="Open this run in the MLflow UI"
          >
            ↗
          </a>
        )}
        {props.onServe && (
          <button
            type="button"
            className="mlops-button"
            title="Generate a serving package from this run's model"
            aria-label={`serve the model of run ${name}`}
            onClick={() => props.onServe?.(run)}
          >
            serve
          </button>
        )}
      </div>
    </li>
  );
});

/** Hidden state the run read, and its last clean replay's verdict: what makes a result hard to reproduce. */
function StateChips({ run }: { run: IRun }): JSX.Element | null {
  if (!run.hidden_state && !run.replayed) {
    return null;
  }
  const match = run.replayed?.startsWith('match');
  return (
    <>
      {run.hidden_state && (
        <span
          className="mlops-run-chip mlops-hidden-state"
          data-testid="mlops-hidden-state"
          title={`This run ${run.hidden_state}`}
        >
          ⚠ hidden state
        </span>
      )}
      {run.replayed && (
        <span
          className={`mlops-run-chip mlops-replayed${match ? '' : ' mlops-replayed-differ'}`}
          data-testid="mlops-replayed"
          title={`mlops reproduce (a fresh kernel, the notebook top to bottom): ${run.replayed}`}
        >
          {match ? 'replayed ✓' : 'replayed ✗'}
        </span>
      )}
    </>
  );
}
