/** Shapes of the server extension's replies (mlops_jupyter/server/openapi.yaml) and stable ids. */

export const PLUGIN_ID = 'mlops-jupyter:plugin';
export const SIDEBAR_ID = 'mlops-jupyter:sidebar';

/** How often the sidebar re-reads the store: a cell finishing should show up without a click. */
export const REFRESH_MS = 3000;
/** Faster while something runs (a busy kernel, a RUNNING run, a live sweep, a pipeline run). */
export const LIVE_REFRESH_MS = 1000;

export type RunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';

export interface IRun {
  run_id: string;
  run_name: string | null;
  status: RunStatus;
  start_time: number | null;
  end_time: number | null;
  experiment_id: string;
  notebook: string | null;
  cell_id: string | null;
  cell_key: string | null;
  execution_count: number | null;
  params: Record<string, string>;
  metrics: Record<string, number>;
  kind?: null | 'sweep' | 'pipeline';
  /** What the run's summary line said about cells it read that changed since they ran or ran out of order. */
  hidden_state?: string | null;
  /** The last clean replay's verdict (`mlops reproduce`): "match · replayed by run ..." or "differ: ...". */
  replayed?: string | null;
  ui_url?: string | null;
}

export interface IRunList {
  notebook: string;
  tracking_uri: string;
  ui: string;
  ui_url?: string | null;
  runs: IRun[];
}

export type Capability = 'tracking' | 'data' | 'sweep' | 'pipeline' | 'serving';

export interface IStatus {
  project: string;
  tracking_uri: string;
  ui: string;
  ui_url: string | null;
  capabilities: Record<Capability, boolean>;
}

/** The pip extra that brings each capability's engine (pyproject's optional-dependencies). */
export const EXTRAS: Record<Capability, string> = {
  tracking: 'mlops-jupyter',
  data: 'mlops-jupyter[data]',
  sweep: 'mlops-jupyter[sweep]',
  pipeline: 'mlops-jupyter[pipeline]',
  serving: 'mlops-jupyter[serving]'
};

export interface ICompare {
  runs: IRun[];
  params: Record<string, (string | null)[]>;
  metrics: Record<string, (number | null)[]>;
  differs: { params: string[]; metrics: string[] };
  history: Record<string, Record<string, [number, number][]>>;
}

export interface ISnapshotVersion {
  rev: string;
  md5: string;
  size: number;
  nfiles: number | null;
  message: string;
  time: number;
  current: boolean;
  runs: { run_id: string; run_name: string | null }[];
}

export interface ISnapshots {
  project: string;
  paths: { path: string; versions: ISnapshotVersion[] }[];
}

export interface IRestored {
  target: string;
  rev: string;
  md5: string;
  message: string;
}

export interface ITrial {
  number: number;
  status: string;
  params: Record<string, unknown>;
  metrics: Record<string, number>;
  node: string | null;
}

export interface ISweep {
  /** null while a live sweep's parent run is not in MLflow yet */
  run_id: string | null;
  run_name: string | null;
  status: string;
  start_time: number | null;
  metric: string | null;
  mode: 'max' | 'min';
  samples: number | null;
  live: boolean;
  best: { trial: number; params: Record<string, unknown>; metrics: Record<string, number> } | null;
  trials: ITrial[];
}

export type StepState = 'fresh' | 'stale' | 'failed' | 'never';

/** A job the server runs as a subprocess (a pipeline run, an image build): its state and last log lines. */
export interface IPipelineRun {
  running: boolean;
  started: number;
  ended: number | null;
  ok: boolean | null;
  log: string[];
  summary: string | null;
}

export interface IPipeline {
  folder: string;
  exported: boolean;
  outdated: boolean;
  /** `notebook`: the step's latest executed notebook, relative to the server root (null: never executed). */
  steps: {
    name: string;
    state: StepState;
    reason: string;
    notebook?: string | null;
    /** The Ray node its latest run went to (with --address), null on this machine. */
    node?: { id: string; ip: string; gpus?: string[] | string | null } | null;
    /** What its tags ask for: gpu, cpu, memory. */
    resources?: Record<string, string | number>;
  }[];
  models: { name: string; step: string }[];
  /** pipeline.svg: the step DAG, coloured by state (redrawn live while a run goes); absent before the export. */
  picture?: string | null;
  run: IPipelineRun | null;
  /** The last `mlops retrain` this server started (present when a step fits a model). */
  retrain?: IPipelineRun | null;
  /** The newest retrain of this pipeline, from any door, with each model's decision. */
  last_retrain?: {
    run_id: string;
    start_time: number;
    decisions: { model: string; decision: string; reason: string | null; challenger: string | null }[];
  } | null;
}

export interface IReportWritten {
  report: string;
  plots: number;
  problems: string[];
  note: string | null;
  baseline: string | null;
}

export interface IValidateCell {
  id: string;
  index: number;
  tags: string[];
  /** Sent for `parameters` cells only: the server checks their values are literals. */
  source?: string;
}

export interface IValidation {
  ok: boolean;
  steps: string[];
  errors: { cell_id: string | null; index: number | null; message: string }[];
}

export interface IGenerated {
  folder: string;
  model_uri: string;
  name: string;
}

/** The last image built from a serving package (its build.json). */
export interface IImage {
  tag: string;
  engine: string;
  size_bytes: number;
  tests: string;
  build_seconds: number;
  pushed: string | null;
}

export interface IServing {
  folder: string;
  package: boolean;
  name: string | null;
  version: string | null;
  image: IImage | null;
  build: IPipelineRun | null;
}

/** A promotion gate's result. */
export interface IGate {
  gate: string;
  status: 'passed' | 'failed' | 'skipped' | 'forced' | string;
  detail?: string;
}

/** A registered model as one environment's registry holds it. */
export interface IRegisteredModel {
  env: string;
  name: string;
  versions: string[];
  aliases: Record<string, string>;
  error?: string;
}

/** An audit record: a register, promote or rollback. */
export interface IAuditRecord {
  action: string;
  env: string;
  version: string;
  who: string;
  when: string;
  t: number;
  previous?: string | null;
  source?: string | null;
  gates?: IGate[];
  reason?: string | null;
}

export interface IModels {
  environments: { name: string; may_move: boolean }[];
  models: IRegisteredModel[];
  history?: { records: IAuditRecord[]; holders: Record<string, string>; unreachable: string[] };
}

export interface IMoved {
  summary: string;
  version: string;
  env: string;
  gates?: IGate[];
}

/** One column of a drift check: the test, its statistic against the threshold, and both sides' shares. */
export interface IDriftColumn {
  column: string;
  kind: 'feature' | 'prediction';
  test: string;
  statistic: number | null;
  threshold: number | null;
  score: number;
  drift: boolean;
  rows: number;
  missing_share: number;
  unseen?: string[];
  unseen_count?: number;
}

/** A serving package's logged predictions against its model's reference (`mlops monitor --json`). */
export interface ICheck {
  drift: boolean;
  drifted: string[];
  rows: number;
  since: string;
  until: string;
  columns: IDriftColumn[];
  windows: { start: string; end: string; rows: number; scores: Record<string, number>; drifted: string[] }[];
  service: {
    requests: number;
    error_share?: number;
    refused_share?: number;
    latency_ms?: Record<string, number>;
  };
  accuracy: { labels: number; accuracy?: number; mae?: number } | null;
  skipped: { file: string; why: string }[];
}

export interface IMonitor {
  packages: string[];
  source: string | null;
  check: ICheck | null;
  problem: string | null;
}
