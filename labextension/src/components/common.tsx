import { Poll } from '@lumino/polling';
import * as React from 'react';

import { pollFrequency } from '../poll';
import { Capability, EXTRAS, IPipelineRun, IStatus } from '../tokens';

export function formatValue(value: unknown): string {
  if (typeof value === 'number') {
    return Number.isInteger(value) ? String(value) : String(+value.toPrecision(4));
  }
  return value === null || value === undefined ? '' : String(value);
}

export function formatTime(ms: number | null | undefined): string {
  return ms ? new Date(ms).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' }) : '';
}

/** Today: the time; before: the date (the full stamp is in the tooltip). */
export function formatShortTime(ms: number | null | undefined): string {
  if (!ms) {
    return '';
  }
  const date = new Date(ms);
  return date.toDateString() === new Date().toDateString()
    ? date.toLocaleTimeString(undefined, { timeStyle: 'short' })
    : date.toLocaleDateString(undefined, { dateStyle: 'short' });
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let size = bytes;
  while (size >= 1024 && i < units.length - 1) {
    size /= 1024;
    i++;
  }
  return `${i ? size.toFixed(1) : size} ${units[i]}`;
}

/** The metric a cell badge shows: the first of `preferred` (the cell's --metrics) the run has,
 * else the first by name. */
export function mainMetric(metrics: Record<string, number>, preferred: string[] = []): [string, number] | null {
  const name = preferred.find(n => n in metrics) ?? Object.keys(metrics).sort()[0];
  return name === undefined ? null : [name, metrics[name]];
}

export function StatusBadge(props: { status: string }): JSX.Element {
  const status = props.status || 'UNKNOWN';
  return <span className={`mlops-status mlops-status-${status.toLowerCase()}`}>{status}</span>;
}

export function ErrorLine(props: { error: string | null; testid?: string }): JSX.Element | null {
  return props.error ? (
    <div className="mlops-error" role="alert" data-testid={props.testid}>
      {props.error}
    </div>
  ) : null;
}

/** Whether a capability's engine is installed: unknown (no status route) counts as yes. */
export function hasCapability(status: IStatus | null, capability: Capability): boolean {
  return !status || status.capabilities[capability] !== false;
}

/** A panel greyed out because its engine is missing, with the one line that fixes it. */
export function Unavailable(props: { capability: Capability; what: string }): JSX.Element {
  return (
    <div className="mlops-unavailable" aria-disabled="true" data-testid={`mlops-unavailable-${props.capability}`}>
      {props.what} needs the {props.capability} engine: <code>pip install '{EXTRAS[props.capability]}'</code>
    </div>
  );
}

/** A labelled one-line text field; `onCommit` on blur and on Enter (what writes or reloads). */
export function Field(props: {
  label: string;
  value: string;
  onChange: (value: string) => void;
  onCommit?: () => void;
  testid?: string;
  placeholder?: string;
  list?: string;
}): JSX.Element {
  return (
    <label className="mlops-field">
      <span>{props.label}</span>
      <input
        type="text"
        data-testid={props.testid}
        placeholder={props.placeholder}
        list={props.list}
        value={props.value}
        onChange={event => props.onChange(event.target.value)}
        onBlur={props.onCommit}
        onKeyDown={event => {
          if (event.key === 'Enter') {
            props.onCommit?.();
          }
        }}
      />
    </label>
  );
}

/**
 * One user action at a time: `busy` names the one running, `failure` holds its error message.
 * `run(what, call)` clears the last failure, awaits `call` and keeps its error for the panel to show.
 */
export function useAction(): {
  busy: string | null;
  failure: string | null;
  run: (what: string, call: () => Promise<void>) => Promise<void>;
} {
  const [busy, setBusy] = React.useState<string | null>(null);
  const [failure, setFailure] = React.useState<string | null>(null);
  const run = async (what: string, call: () => Promise<void>) => {
    setBusy(what);
    setFailure(null);
    try {
      await call();
    } catch (err) {
      setFailure((err as Error).message);
    } finally {
      setBusy(null);
    }
  };
  return { busy, failure, run };
}

/**
 * Run `load` now and every `ms(last)` milliseconds while mounted (0: until `reload`), as a Lumino `Poll`: it
 * backs off while `load` fails and stands by while the page is hidden. Returns its last result.
 */
export function usePolled<T>(
  load: () => Promise<T>,
  ms: (last: T | null) => number,
  deps: React.DependencyList
): { data: T | null; error: string | null; reload: () => void } {
  const [data, setData] = React.useState<T | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const poll = React.useRef<Poll | null>(null);
  React.useEffect(() => {
    let alive = true;
    const pace = (last: T | null) => {
      const delay = ms(last);
      const interval = delay > 0 ? delay : Poll.NEVER;
      if (current.frequency.interval !== interval) {
        current.frequency = pollFrequency(interval);
      }
    };
    const current = new Poll({
      factory: async () => {
        try {
          const last = await load();
          if (alive) {
            setData(last);
            setError(null);
          }
          pace(last);
        } catch (err) {
          if (alive) {
            setError((err as Error).message);
          }
          pace(null);
          throw err; // the poll backs off
        }
      },
      frequency: pollFrequency(Poll.NEVER),
      standby: 'when-hidden'
    });
    poll.current = current;
    return () => {
      alive = false;
      current.dispose();
    };
  }, deps);
  return { data, error, reload: () => void poll.current?.refresh() };
}

/** A job the server runs (a pipeline run, an image build): how it stands, its last lines of output. */
export function JobLog(props: { job: IPipelineRun; testid: string; going: string; noun: string }): JSX.Element {
  const { job } = props;
  return (
    <div className="mlops-pipeline-run" data-testid={props.testid}>
      <div className="mlops-muted">
        {job.running ? props.going : job.ok ? `last ${props.noun} succeeded` : `last ${props.noun} failed`}
        {job.summary ? `: ${job.summary}` : ''}
      </div>
      <pre className="mlops-log">{job.log.join('\n')}</pre>
    </div>
  );
}
