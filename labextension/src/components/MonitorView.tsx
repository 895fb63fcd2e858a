import * as React from 'react';

import { MlopsModel } from '../model';
import { ICheck, IDriftColumn } from '../tokens';
import { ErrorLine, formatValue, usePolled } from './common';

const SPANS = ['1h', '6h', '24h', '7d'];
const WINDOWS: Record<string, string> = { '1h': '5m', '6h': '30m', '24h': '1h', '7d': '6h' };
const REFRESH_MS = 60_000; // the package recomputes its own gauges each minute; so does this view

/** A column's score per window as a line, the threshold (1) dashed: drift over time at a glance. */
function Sparkline(props: { scores: number[] }): JSX.Element {
  const w = 90;
  const h = 20;
  const top = Math.max(1.5, ...props.scores);
  const y = (v: number) => h - 2 - ((h - 4) * v) / top;
  const n = Math.max(props.scores.length - 1, 1);
  const points = props.scores.map((v, i) => `${((w * i) / n).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  return (
    <svg className="mlops-spark" width={w} height={h} viewBox={`0 0 ${w} ${h}`} aria-hidden="true">
      <line x1={0} x2={w} y1={y(1)} y2={y(1)} className="mlops-spark-limit" />
      {props.scores.length > 1 ? (
        <polyline points={points} className="mlops-spark-line" />
      ) : (
        <circle cx={w / 2} cy={y(props.scores[0] ?? 0)} r={2} className="mlops-spark-dot" />
      )}
    </svg>
  );
}

function ColumnRow(props: { column: IDriftColumn; check: ICheck }): JSX.Element {
  const c = props.column;
  const scores = props.check.windows.map(w => w.scores[c.column] ?? 0);
  return (
    <tr className={c.drift ? 'mlops-drift-row mlops-drifted' : 'mlops-drift-row'} data-column={c.column}>
      <td title={c.kind === 'prediction' ? "the model's prediction" : 'an input feature'}>
        {c.kind === 'prediction' ? <i>{c.column}</i> : c.column}
      </td>
      <td title={`${c.test}: ${formatValue(c.statistic)} against ${formatValue(c.threshold)}`}>
        {c.drift ? (
          <span className="mlops-chip mlops-gate-failed">drift</span>
        ) : (
          <span className="mlops-muted">ok</span>
        )}
      </td>
      <td>
        <Sparkline scores={scores.length ? scores : [c.score]} />
      </td>
      <td className="mlops-muted">
        {c.unseen_count ? `new: ${c.unseen!.slice(0, 2).join(', ')}` : ''}
        {c.missing_share ? ` ${(c.missing_share * 100).toFixed(1)}% missing` : ''}
      </td>
    </tr>
  );
}

/** The latest windows with drift, newest first: when each drift was seen and in which columns. */
function Alerts(props: { check: ICheck }): JSX.Element {
  const hits = props.check.windows
    .filter(w => w.drifted.length)
    .reverse()
    .slice(0, 5);
  if (!hits.length) {
    return <div className="mlops-muted">No alerts in this span.</div>;
  }
  return (
    <ul className="mlops-alerts" data-testid="mlops-monitor-alerts">
      {hits.map(w => (
        <li key={w.start}>
          <span className="mlops-muted">
            {new Date(w.start).toLocaleString(undefined, { timeStyle: 'short', dateStyle: 'short' })}
          </span>{' '}
          {w.drifted.join(', ')} <span className="mlops-muted">({w.rows} rows)</span>
        </li>
      ))}
    </ul>
  );
}

function Service(props: { check: ICheck }): JSX.Element {
  const { service, accuracy } = props.check;
  const parts = [`${service.requests} requests`];
  if (service.requests) {
    parts.push(`${((service.error_share ?? 0) * 100).toFixed(1)}% errors`);
  }
  if (service.latency_ms?.p99 !== undefined) {
    parts.push(`p99 ${service.latency_ms.p99.toFixed(1)} ms`);
  }
  if (accuracy?.labels) {
    parts.push(
      accuracy.accuracy !== undefined
        ? `accuracy ${accuracy.accuracy.toFixed(3)} (${accuracy.labels} labels)`
        : `MAE ${formatValue(accuracy.mae)} (${accuracy.labels} labels)`
    );
  }
  return <div className="mlops-muted">{parts.join(' · ')}</div>;
}

/**
 * A serving package's logged predictions against its model's training data: each feature's and the prediction's
 * drift over time (1 = its calibrated threshold), the latest alerts, errors, latency and live accuracy.
 */
export function MonitorView(props: { model: MlopsModel }): JSX.Element {
  const { model } = props;
  const [source, setSource] = React.useState('');
  const [since, setSince] = React.useState('24h');
  const { data, error, reload } = usePolled(
    () => model.monitor(source, since, WINDOWS[since]),
    () => REFRESH_MS,
    [model.path, source, since]
  );
  const check = data?.check ?? null;
  return (
    <div className="mlops-monitor" data-testid="mlops-monitor">
      <div className="mlops-toolbar">
        <select
          aria-label="serving package"
          data-testid="mlops-monitor-source"
          value={data?.source ?? source}
          onChange={event => setSource(event.target.value)}
        >
          {(data?.packages ?? []).map(p => (
            <option key={p} value={p}>
              {p}
            </option>
          ))}
        </select>
        <select aria-label="span" value={since} onChange={event => setSince(event.target.value)}>
          {SPANS.map(s => (
            <option key={s} value={s}>
              last {s}
            </option>
          ))}
        </select>
        <button type="button" className="mlops-button" title="Check again" onClick={reload}>
          ↻
        </button>
      </div>
      <ErrorLine error={error ?? data?.problem ?? null} testid="mlops-monitor-error" />
      <div className="mlops-body">
        {data && !data.packages.length && (
          <div className="mlops-empty">
            No serving package beside this notebook: <code>%mlops serve generate runs:/RUN/model --out served</code>
          </div>
        )}
        {check && (
          <>
            <div
              className={check.drift ? 'mlops-verdict mlops-verdict-drift' : 'mlops-verdict'}
              data-testid="mlops-monitor-verdict"
            >
              {!check.rows
                ? `no predictions logged in the last ${since}`
                : check.drift
                  ? `drift in ${check.drifted.length} of ${check.columns.length} columns: ${check.drifted.join(', ')}`
                  : `no drift in ${check.columns.length} columns`}
              <span className="mlops-muted"> · {check.rows} rows</span>
            </div>
            <Service check={check} />
            {check.skipped.map(s => (
              <div className="mlops-muted" key={s.file}>
                skipped {s.file}: {s.why}
              </div>
            ))}
            <table className="mlops-drift-table">
              <tbody>
                {[...check.columns]
                  .sort((a, b) => Number(b.drift) - Number(a.drift) || b.score - a.score)
                  .map(c => (
                    <ColumnRow key={c.column} column={c} check={check} />
                  ))}
              </tbody>
            </table>
            <div className="mlops-section-title">Latest alerts</div>
            <Alerts check={check} />
          </>
        )}
      </div>
    </div>
  );
}
