import * as React from 'react';

import { MlopsModel } from '../model';
import { ICompare } from '../tokens';
import { ErrorLine, formatValue } from './common';
import { MetricChart } from './MetricChart';

/** Two or more runs side by side: params (differences marked), metrics, and one metric charted. */
export function CompareView(props: { model: MlopsModel; ids: string[]; onClose: () => void }): JSX.Element {
  const [data, setData] = React.useState<ICompare | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const [metric, setMetric] = React.useState<string>('');
  const key = props.ids.join(',');

  React.useEffect(() => {
    let alive = true;
    props.model.compare(props.ids).then(
      reply => {
        if (alive) {
          setData(reply);
          setError(null);
        }
      },
      err => alive && setError((err as Error).message)
    );
    return () => {
      alive = false;
    };
  }, [key]);

  const metricNames = data ? Object.keys(data.metrics).sort() : [];
  const shown = metricNames.includes(metric) ? metric : (metricNames[0] ?? '');
  const names = data?.runs.map(run => run.run_name ?? run.run_id.slice(0, 8)) ?? [];

  return (
    <div className="mlops-compare" data-testid="mlops-compare" aria-label="comparison of the selected runs">
      <div className="mlops-section-title">
        <span>Compare {props.ids.length} runs</span>
        <button type="button" className="mlops-button" onClick={props.onClose} aria-label="close the comparison">
          ✕
        </button>
      </div>
      <ErrorLine error={error} />
      {!data && !error && <div className="mlops-hint">loading…</div>}
      {data && (
        <>
          <table className="mlops-compare-table">
            <thead>
              <tr>
                <th />
                {names.map((name, i) => (
                  <th key={data.runs[i].run_id} title={data.runs[i].run_id}>
                    {name}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              <CompareRows kind="params" values={data.params} differs={data.differs.params} />
              <CompareRows kind="metrics" values={data.metrics} differs={data.differs.metrics} />
            </tbody>
          </table>
          {shown && (
            <div className="mlops-chart-box">
              <label className="mlops-field-inline">
                chart
                <select value={shown} onChange={event => setMetric(event.target.value)}>
                  {metricNames.map(name => (
                    <option key={name} value={name}>
                      {name}
                    </option>
                  ))}
                </select>
              </label>
              <MetricChart
                metric={shown}
                runs={data.runs.map((run, i) => ({ id: run.run_id, name: names[i] }))}
                values={data.metrics[shown]}
                history={data.history?.[shown]}
              />
            </div>
          )}
        </>
      )}
    </div>
  );
}

function CompareRows(props: {
  kind: 'params' | 'metrics';
  values: Record<string, (string | number | null)[]>;
  differs: string[];
}): JSX.Element {
  const keys = Object.keys(props.values).sort();
  return (
    <>
      <tr className="mlops-compare-group">
        <th colSpan={100}>{props.kind}</th>
      </tr>
      {keys.map(key => {
        const differs = props.differs.includes(key);
        return (
          <tr key={key} className={differs ? 'mlops-differs' : ''} data-key={key}>
            <th title={differs ? 'differs between the runs' : 'the same in every run'}>
              {differs && (
                <span className="mlops-differs-mark" aria-label="differs">
                  ≠{' '}
                </span>
              )}
              {key}
            </th>
            {props.values[key].map((value, i) => (
              <td key={i}>{value === null ? '—' : formatValue(value)}</td>
            ))}
          </tr>
        );
      })}
    </>
  );
}
