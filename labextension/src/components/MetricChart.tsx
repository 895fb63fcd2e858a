import * as React from 'react';

import { formatValue } from './common';

const W = 260;
const H = 120;
const PAD = { left: 34, right: 6, top: 8, bottom: 20 };
const SERIES = 6; // colours, .mlops-series-0..5 in the stylesheet (theme variables)

interface IChartProps {
  metric: string;
  runs: { id: string; name: string }[];
  values: (number | null)[];
  /** run id -> [[step, value]] when the metric was logged at more than one step. */
  history?: Record<string, [number, number][]>;
}

/** A small SVG chart drawn by us: lines over steps when there is a history, else a bar per run. */
export function MetricChart(props: IChartProps): JSX.Element {
  const series = props.runs
    .map((run, i) => ({ ...run, i, points: props.history?.[run.id] ?? [] }))
    .filter(s => s.points.length > 1);
  return (
    <figure className="mlops-chart" data-testid="mlops-chart" data-kind={series.length ? 'lines' : 'bars'}>
      {series.length ? <Lines {...props} series={series} /> : <Bars {...props} />}
      <figcaption className="mlops-legend">
        {props.runs.map((run, i) => (
          <span key={run.id}>
            <i className={`mlops-swatch mlops-series-${i % SERIES}`} />
            {run.name}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

function extent(values: number[]): [number, number] {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo > 0 && lo / hi > 0.5) {
    lo -= (hi - lo) * 0.3; // close values: a zero baseline would hide their difference
  } else {
    lo = Math.min(lo, 0);
  }
  if (hi === lo) {
    lo = Math.min(lo, 0);
    hi = hi === lo ? lo + 1 : hi;
  }
  return [lo, hi];
}

function Axis(props: { lo: number; hi: number }): JSX.Element {
  const y = (v: number) => PAD.top + (1 - (v - props.lo) / (props.hi - props.lo)) * (H - PAD.top - PAD.bottom);
  return (
    <g className="mlops-axis">
      {[props.lo, props.hi].map(v => (
        <g key={v}>
          <line x1={PAD.left} x2={W - PAD.right} y1={y(v)} y2={y(v)} />
          <text x={PAD.left - 3} y={y(v) + 3} textAnchor="end">
            {formatValue(v)}
          </text>
        </g>
      ))}
    </g>
  );
}

function Bars(props: IChartProps): JSX.Element {
  const present = props.values.filter((v): v is number => v !== null);
  const [lo, hi] = extent(present.length ? present : [0]);
  const inner = W - PAD.left - PAD.right;
  const slot = inner / Math.max(props.runs.length, 1);
  const y = (v: number) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  return (
    <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${props.metric} per run`}>
      <Axis lo={lo} hi={hi} />
      {props.values.map((value, i) =>
        value === null ? null : (
          <g key={props.runs[i].id}>
            <rect
              className={`mlops-bar mlops-series-${i % SERIES}`}
              x={PAD.left + i * slot + slot * 0.15}
              width={slot * 0.7}
              y={y(value)}
              height={Math.max(y(lo) - y(value), 1)}
            >
              <title>{`${props.runs[i].name}: ${props.metric}=${formatValue(value)}`}</title>
            </rect>
            <text className="mlops-bar-label" x={PAD.left + (i + 0.5) * slot} y={H - 6} textAnchor="middle">
              {formatValue(value)}
            </text>
          </g>
        )
      )}
    </svg>
  );
}

function Lines(
  props: IChartProps & { series: { id: string; name: string; i: number; points: [number, number][] }[] }
): JSX.Element {
  const steps = props.series.flatMap(s => s.points.map(p => p[0]));
  const values = props.series.flatMap(s => s.points.map(p => p[1]));
  const [lo, hi] = extent(values);
  const s0 = Math.min(...steps);
  const s1 = Math.max(...steps) === s0 ? s0 + 1 : Math.max(...steps);
  const x = (s: number) => PAD.left + ((s - s0) / (s1 - s0)) * (W - PAD.left - PAD.right);
  const y = (v: number) => PAD.top + (1 - (v - lo) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  return (
    <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${props.metric} over steps`}>
      <Axis lo={lo} hi={hi} />
      <text className="mlops-axis-label" x={W - PAD.right} y={H - 6} textAnchor="end">
        {`step ${s0}–${s1}`}
      </text>
      {props.series.map(s => (
        <polyline
          key={s.id}
          className={`mlops-line mlops-series-${s.i % SERIES}`}
          points={s.points.map(([step, v]) => `${x(step).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}
        >
          <title>{`${s.name}: ${props.metric}`}</title>
        </polyline>
      ))}
    </svg>
  );
}
