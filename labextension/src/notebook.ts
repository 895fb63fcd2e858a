import { Cell, ICodeCellModel } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';

import { mainMetric, formatValue } from './components/common';
import { parseTags } from './tags';
import { IRun } from './tokens';

/** What a run's cell looks like in the open notebook: where it is and how the user knows it. */
export interface ICellInfo {
  index: number;
  executionCount: number | null;
  firstLine: string;
}

/** The first line a user recognises a cell by: the `%%mlops ...` magic line is skipped. */
export function firstLine(source: string): string {
  const lines = source
    .split('\n')
    .map(line => line.trim())
    .filter(Boolean);
  const line = lines.find(l => !l.startsWith('%%')) ?? lines[0] ?? '';
  return line.length > 80 ? `${line.slice(0, 79)}…` : line;
}

/** cell id -> its position, execution count and first line, for the cells of `panel`. */
export function cellInfos(panel: NotebookPanel | null): Map<string, ICellInfo> {
  const infos = new Map<string, ICellInfo>();
  const cells = panel?.content.model?.cells;
  if (!cells) {
    return infos;
  }
  for (let index = 0; index < cells.length; index++) {
    const cell = cells.get(index);
    const count = cell.type === 'code' ? (cell as ICodeCellModel).executionCount : null;
    infos.set(cell.id, { index, executionCount: count, firstLine: firstLine(cell.sharedModel.getSource()) });
  }
  return infos;
}

/** Scroll to the cell with this id and make it the active, selected cell; false if it is gone. */
export function revealCell(panel: NotebookPanel, cellId: string): boolean {
  const notebook = panel.content;
  const index = cellInfos(panel).get(cellId)?.index;
  if (index === undefined) {
    return false;
  }
  notebook.deselectAll();
  notebook.activeCellIndex = index;
  notebook.mode = 'command';
  const cell = notebook.widgets[index];
  void notebook.scrollToCell(cell, 'center');
  cell.node.focus();
  return true;
}

const BADGE = 'mlops-cell-badge';

/** The metric names a `%%mlops run --metrics a,b` / `%%mlops sweep --metric a` line lists, in order. */
export function metricsOrder(source: string): string[] {
  const magic = source.split('\n', 1)[0];
  const match = /^%%mlops\s.*--metrics?[=\s]+([\w.,-]+)/.exec(magic);
  return match ? match[1].split(',').filter(Boolean) : [];
}

/**
 * A small badge on each tracked cell of a notebook: its latest run's status and main metric.
 * Cells without a run get none. Text only (textContent): run data is never parsed as HTML.
 */
export function updateBadges(panel: NotebookPanel, runs: IRun[], onClick: (run: IRun) => void): void {
  const latest = new Map<string, IRun>();
  for (const run of runs) {
    // newest first: the first run seen for a cell is its latest
    if (run.cell_id && !latest.has(run.cell_id)) {
      latest.set(run.cell_id, run);
    }
  }
  for (const cell of panel.content.widgets) {
    setBadge(cell, latest.get(cell.model.id) ?? null, onClick);
  }
}

function setBadge(cell: Cell, run: IRun | null, onClick: (run: IRun) => void): void {
  // its own line between the input and the outputs: it never covers code
  const input = cell.node.querySelector<HTMLElement>(':scope > .jp-Cell-inputWrapper');
  if (!input) {
    return;
  }
  let badge = cell.node.querySelector<HTMLButtonElement>(`:scope > .${BADGE}`);
  if (!run) {
    badge?.remove();
    return;
  }
  if (!badge) {
    badge = document.createElement('button');
    badge.className = BADGE;
    badge.type = 'button';
    badge.dataset.testid = 'mlops-cell-badge';
    badge.append(document.createElement('span'), document.createElement('span'));
    input.after(badge);
  }
  const metric = mainMetric(run.metrics, metricsOrder(cell.model.sharedModel.getSource()));
  const [status, value] = Array.from(badge.children) as HTMLElement[];
  const shown = `${run.run_id} ${run.status} ${metric ? metric[0] : ''} ${run.hidden_state ?? ''} ${run.replayed ?? ''}`;
  if (badge.dataset.shown === shown) {
    return; // unchanged since the last poll: no DOM writes
  }
  badge.dataset.shown = shown;
  status.className = `mlops-status mlops-status-${run.status.toLowerCase()}`;
  status.textContent = run.status;
  value.className = 'mlops-cell-badge-metric';
  value.textContent = metric ? `${metric[0]}=${formatValue(metric[1])}` : '';
  // a run that read hidden state says so on its cell, as its summary line did
  value.textContent += run.hidden_state ? ' ⚠' : '';
  badge.dataset.runId = run.run_id;
  badge.dataset.status = run.status;
  badge.dataset.hiddenState = run.hidden_state ? 'true' : 'false';
  badge.title =
    `mlops: latest run ${run.run_name ?? ''} (${run.run_id.slice(0, 8)}) ${run.status}` +
    (run.hidden_state ? `; it ${run.hidden_state}` : '') +
    (run.replayed ? `; replayed: ${run.replayed}` : '') +
    ': show it in the MLOps sidebar';
  badge.onclick = (event: MouseEvent) => {
    event.stopPropagation();
    onClick(run);
  };
}

/** What a cell is in the pipeline export makes of the notebook (pipeline/tags.py): its step, and its roles. */
export interface ICellRole {
  step: string;
  roles: string[];
}

const SHARED_ROLES = ['parameters', 'imports', 'functions'];

/**
 * Each cell's step and roles, from the cells' tags in order: a `step:` tag starts a step, an untagged cell
 * joins the step above it; `parameters`, `imports`, `functions` and `skip` cells belong to no step.
 */
export function cellRoles(cellTags: readonly (readonly string[])[]): ICellRole[] {
  let step = '';
  return cellTags.map(tags => {
    const parsed = parseTags(tags);
    if (parsed.step) {
      step = parsed.step;
    }
    const roles: string[] = [...parsed.flags];
    if (parsed.model) {
      roles.push(`model:${parsed.model}`);
    }
    const shared = parsed.flags.some(f => SHARED_ROLES.includes(f) || f === 'skip');
    return { step: shared ? '' : step, roles };
  });
}

const CHIPS = 'mlops-chips';
const STEP_COLOURS = 8; // --mlops-step-0 ... --mlops-step-7 in the style sheet, as Kale colours its blocks

/**
 * A chip on each cell naming its step (one colour per step, in the order the steps appear) and its roles;
 * none on a notebook without pipeline tags. Text only (textContent).
 */
export function updateChips(panel: NotebookPanel): void {
  const widgets = panel.content.widgets;
  const tags = widgets.map(cell => {
    const value = cell.model.getMetadata('tags');
    return Array.isArray(value) ? value.map(String) : [];
  });
  const roles = cellRoles(tags);
  const tagged = roles.some(r => r.step || r.roles.length);
  const order: string[] = [];
  widgets.forEach((cell, i) => {
    const { step, roles: those } = roles[i];
    if (step && !order.includes(step)) {
      order.push(step);
    }
    setChips(cell, tagged ? step : '', tagged ? those : [], order.indexOf(step) % STEP_COLOURS);
  });
}

function setChips(cell: Cell, step: string, roles: string[], colour: number): void {
  const input = cell.node.querySelector<HTMLElement>(':scope > .jp-Cell-inputWrapper');
  if (!input) {
    return;
  }
  let box = cell.node.querySelector<HTMLElement>(`:scope > .${CHIPS}`);
  const shown = `${step}|${colour}|${roles.join(',')}`;
  if (!step && !roles.length) {
    box?.remove();
    return;
  }
  if (box?.dataset.shown === shown) {
    return; // unchanged: no DOM writes
  }
  if (!box) {
    box = document.createElement('div');
    box.className = CHIPS;
    box.dataset.testid = 'mlops-cell-chips';
    input.before(box);
  }
  box.dataset.shown = shown;
  box.dataset.step = step;
  box.replaceChildren();
  if (step) {
    const chip = document.createElement('span');
    chip.className = `mlops-chip mlops-chip-step mlops-step-${colour}`;
    chip.textContent = step;
    chip.title = `pipeline step ${step}`;
    box.append(chip);
  }
  for (const role of roles) {
    const chip = document.createElement('span');
    chip.className = 'mlops-chip mlops-chip-role';
    chip.textContent = role;
    box.append(chip);
  }
}
