/**
 * What the specs share: galata's `test` with the page's console errors collected, the seeding done by
 * seed.py (the pytest suite's MLflow/DVC helpers), and the user's steps in the lab (open a notebook,
 * open the MLOps sidebar on a tab, run cells, time a refresh of the runs panel).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { expect, galata, IJupyterLabPageFixture, test as base } from '@jupyterlab/galata';
import type { APIRequestContext, Locator, Page, TestInfo } from '@playwright/test';

const PYTHON = process.env.MLOPS_PYTHON!;
/** The project the lab serves (its root_dir), seeded before the server started. */
export const ROOT = path.join(process.env.MLOPS_UI_STATE!, 'project');
const SEED = path.resolve(__dirname, '..', 'seed.py');
// the in-page timing of a refresh, shared with the Python bench (tests/lab_browser.py)
const MEASURE_RENDER = path.resolve(__dirname, '..', '..', 'tests', 'measure_render.js');
const SIDEBAR_TAB =
  '.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="mlops-jupyter:sidebar"]';

export const test = base.extend<{ consoleErrors: string[] }>({
  // the mocked user settings (galata's defaults) already turn off the news feed and update check
  mockSettings: galata.DEFAULT_SETTINGS,
  consoleErrors: [
    async ({ page }, use, testInfo) => {
      const errors: string[] = [];
      page.on('console', msg => {
        if (msg.type() === 'error') {
          errors.push(msg.text());
        }
      });
      await use(errors);
      if (testInfo.status !== testInfo.expectedStatus && errors.length) {
        await testInfo.attach('browser console errors', { body: errors.join('\n') });
        console.log(`browser console errors:\n${errors.join('\n')}`);
      }
    },
    { auto: true }
  ]
});
export { expect };

/** Run `seed.py VERB ARGS` with `input` as JSON on stdin; returns what it printed, parsed. */
export function seed(verb: string, args: string[] = [], input?: unknown): any {
  const proc = spawnSync(PYTHON, [SEED, verb, ...args], {
    input: input === undefined ? '' : JSON.stringify(input),
    encoding: 'utf-8',
    timeout: 180_000
  });
  if (proc.status !== 0) {
    throw new Error(`seed.py ${verb} failed (${proc.status ?? proc.signal}):\n${proc.stderr}`);
  }
  return proc.stdout.trim() ? JSON.parse(proc.stdout) : null;
}

/** A notebook of code cells at `rel` (under ROOT): each item is a source, or [source, tags]. Returns cell ids. */
export function notebook(rel: string, cells: (string | [string, string[]])[]): string[] {
  return seed('notebook', [path.join(ROOT, rel)], cells);
}

/** Finished runs of notebook `rel`: name, start (ms), params, metrics (tests/mlflow_seed.seed_runs). */
export function seedRuns(rel: string, runs: object[], root: string = ROOT): string[] {
  return seed('runs', [root, path.join(ROOT, rel)], runs);
}

export function needRoutes(...names: string[]): void {
  const routes = new Set<string>(seed('routes'));
  const missing = names.filter(n => !routes.has(n)).sort();
  expect(
    missing,
    `the server extension does not register ${JSON.stringify(missing)} yet (handlers.ROUTES)`
  ).toEqual([]);
}

export async function getJson(request: APIRequestContext, route: string): Promise<any> {
  const resp = await request.get(`/${route}`, { timeout: 30_000 });
  expect(resp.ok(), `GET /${route}: ${resp.status()}`).toBeTruthy();
  return resp.json();
}

/** A screenshot of the whole page into this test's folder under test-results/ (and the report). */
export async function shot(page: Page, testInfo: TestInfo, name: string): Promise<void> {
  const file = testInfo.outputPath(`lab_${name}.png`);
  await page.screenshot({ path: file });
  await testInfo.attach(`lab_${name}`, { path: file, contentType: 'image/png' });
}

/** Open `rel` (under ROOT) from the file browser, as a user would. */
export async function openNotebook(page: IJupyterLabPageFixture, rel: string): Promise<void> {
  await page.notebook.openByPath(`/${rel}`);
  await expect(page.locator('.jp-NotebookPanel')).toBeVisible({ timeout: 60_000 });
}

/** Click the MLOps tab in the left area (if it is not open) and return the sidebar locator. */
export async function openSidebar(page: Page): Promise<Locator> {
  const tab = page.locator(SIDEBAR_TAB);
  await expect(tab).toBeVisible({ timeout: 30_000 });
  const panel = page.getByTestId('mlops-sidebar');
  if (!(await panel.isVisible())) {
    await tab.click();
  }
  await expect(panel).toBeVisible();
  return panel;
}

/** Open the notebook, then the sidebar on one of its tabs; returns the sidebar locator. */
export async function openPanel(
  page: IJupyterLabPageFixture,
  rel: string,
  tab = 'runs'
): Promise<Locator> {
  await openNotebook(page, rel);
  const panel = await openSidebar(page);
  if (tab !== 'runs') {
    await panel.getByTestId(`mlops-tab-${tab}`).click();
  }
  return panel;
}

/** Run the notebook's first `count` cells with Shift+Enter, waiting for each prompt's number. */
export async function runCells(page: Page, count: number): Promise<void> {
  await expect(
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
  ).toHaveCount(1, { timeout: 60_000 });
  // before Lab has read the kernel specs it may ask which kernel to start: the notebook's own is preselected
  const chooser = page.locator('.jp-Dialog', { hasText: 'Select Kernel' });
  const prompts = page.locator('.jp-CodeCell .jp-InputPrompt');
  for (let i = 0; i < count; i++) {
    // Shift+Enter runs the selected cell and selects the next one
    for (let attempt = 0; attempt < 3; attempt++) {
      // a keypress can land before Lab has focused the notebook
      try {
        if (await chooser.isVisible()) {
          await chooser.getByRole('button', { name: 'Select' }).click();
        }
        if (i === 0) {
          await prompts.first().click({ timeout: 10_000 });
        }
        await page.keyboard.press('Shift+Enter');
        await expect(prompts.nth(i)).toContainText(/\[\d+\]/, { timeout: 30_000 });
        break;
      } catch {
        continue;
      }
    }
  }
}

export interface RenderFigures {
  render_ms: number;
  fetch_ms: number;
  raw_fetch_ms: number;
  rows: number;
}

/** Time, in the page, a forced refresh of the runs panel (fetch -> rows in the DOM) and, as the
 * anchor, the same GET runs fetched raw (JSON parsed, nothing drawn). Milliseconds. */
export async function measureRender(page: Page, rel: string): Promise<RenderFigures> {
  // the click and the wait happen inside the page: expect()'s polling of an attribute builds an
  // accessibility snapshot of the whole page each time, on the main thread the panel renders on
  const script = fs.readFileSync(MEASURE_RENDER, 'utf-8');
  const { render_ms, fetch_ms, rows } = await page.evaluate<Omit<RenderFigures, 'raw_fetch_ms'>>(`(${script})()`);
  const raw = await page.evaluate(async url => {
    const t = performance.now();
    const r = await fetch(url, { cache: 'no-store' });
    await r.json();
    return performance.now() - t;
  }, `/mlops/runs?path=${rel}`);
  return { render_ms, fetch_ms, raw_fetch_ms: raw, rows };
}
