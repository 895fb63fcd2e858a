/** Shapes of the server extension's replies (mlops_jupyter/server/openapi.yaml) and stable ids. */

export const PLUGIN_ID = 'mlops-jupyter:plugin';
export const SIDEBAR_ID = 'mlops-jupyter:sidebar';

/** How often the open sidebar re-reads the store: a cell finishing should show up without a click. */
export const REFRESH_MS = 3000;

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
}

export interface IRunList {
  notebook: string;
  tracking_uri: string;
  ui: string;
  runs: IRun[];
}
