import * as React from 'react';

import { MlopsModel } from '../model';
import { ISweep } from '../tokens';
import { ErrorLine, formatTime, formatValue, StatusBadge, usePolled } from './common';

/** This notebook's sweeps, newest first; polled every second while one is live. */
export function SweepsView(props: { model: MlopsModel }): JSX.Element {
  const { model } = props;
  const { data, error } = usePolled(
    () => model.sweeps(),
    last => (last?.sweeps.some(s => s.live) ? model.intervals.live : model.intervals.idle),
    [model.path]
  );
  return (
    <div className="mlops-sweeps" data-testid="mlops-sweeps">
      <ErrorLine error={error} />
      <div className="mlops-body">
        {data && !data.sweeps.length && (
          <div className="mlops-empty">
            No sweeps yet:{' '}
            <code>%%mlops sweep --space "lr=loguniform(1e-4,1e-1)" --samples 20 --metric acc --mode max</code>
          </div>
        )}
        {data?.sweeps.map((sweep, i) => (
          <SweepCard key={sweep.run_id ?? `live-${i}`} sweep={sweep} open={i === 0 || sweep.live} />
        ))}
      </div>
    </div>
  );
}

function SweepCard(props: { sweep: ISweep; open: boolean }): JSX.Element {
  const { sweep } = props;
  const best = sweep.best;
  const done = sweep.trials.filter(t => !['PENDING', 'RUNNING'].includes(t.status)).length;
  // grid points times --samples: the server's count, or what the table already lists
  const total = Math.max(sweep.samples ?? 0, sweep.trials.length, 1);
  const metric =
    sweep.metric ??
    Object.keys(best?.metrics ?? sweep.trials.find(t => Object.keys(t.metrics).length)?.metrics ?? {})[0] ??
    '';
  const paramNames = Array.from(new Set<string>(sweep.trials.flatMap(t => Object.keys(t.params)))).sort();
  return (
    <details className="mlops-sweep" open={props.open} data-live={sweep.live ? 'true' : 'false'}>
      <summary className="mlops-section-title">
        <StatusBadge status={sweep.live ? 'RUNNING' : sweep.status} />
        <span className="mlops-sweep-name">{sweep.run_name ?? sweep.run_id?.slice(0, 8) ?? 'starting…'}</span>
        <span className="mlops-muted">
          {done}/{total} trials · {sweep.mode} {metric} · {formatTime(sweep.start_time)}
        </span>
      </summary>
      <progress className="mlops-progress" max={total} value={done} />
      {best && (
        <div className="mlops-best" data-testid="mlops-sweep-best">
          {sweep.live ? 'best so far' : 'best'}: trial {best.trial} · {metric}={formatValue(best.metrics[metric])} ·{' '}
          {Object.entries(best.params)
            .map(([k, v]) => `${k}=${formatValue(v)}`)
            .join(' ')}
        </div>
      )}
      <div className="mlops-table-scroll">
        <table className="mlops-trials">
          <thead>
            <tr>
              <th>#</th>
              <th>status</th>
              {paramNames.map(name => (
                <th key={name}>{name}</th>
              ))}
              <th>{metric}</th>
            </tr>
          </thead>
          <tbody>
            {sweep.trials.map(trial => (
              <tr key={trial.number} className={best && best.trial === trial.number ? 'mlops-best-row' : ''}>
                <td>{trial.number}</td>
                <td>
                  <StatusBadge status={trial.status} />
                </td>
                {paramNames.map(name => (
                  <td key={name}>{formatValue(trial.params[name])}</td>
                ))}
                <td>{formatValue(trial.metrics[metric])}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </details>
  );
}
