/**
 * `%mlops runs` as a widget in a real notebook, over the 1,000 seeded runs: drawn, sorted, filtered and two
 * runs compared. The render figures are printed, never asserted.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { Page } from '@playwright/test';
import { expect, notebook, openNotebook, ROOT, runCells, shot, test } from './lab';

const ROWS = 200; // _widgets.ROW_LIMIT: rows drawn at once

test('the runs widget draws, sorts, filters and compares a thousand runs', async ({ page }, testInfo) => {
  await expect
    .poll(() => fs.existsSync(path.join(ROOT, 'perf', '.seeded')), { timeout: 240_000, message: 'runs seeded' })
    .toBe(true);
  notebook('perf/widget.ipynb', ['%load_ext mlops_jupyter', '%mlops runs --all']);
  await openNotebook(page, 'perf/widget.ipynb');
  await runCells(page, 1);
  // the first run configures tracking (the store, the recorder); the second is what a user waits for after
  const first = await timedRun(page, 'Shift+Enter');
  await page.locator('.jp-CodeCell .jp-InputPrompt').nth(1).click(); // Shift+Enter moved on to a new cell
  const again = await timedRun(page, 'Control+Enter');
  const widget = page.locator('.mlops-runs');
  await expect(widget.locator('tr[data-run]')).toHaveCount(ROWS);
  const line =
    `runs widget, 1000 runs: run the cell -> ${ROWS} rows in the DOM ${again.total.toFixed(0)} ms ` +
    `(first run, tracking set up: ${first.total.toFixed(0)} ms), kernel and browser together ` +
    `(goal < 300 ms: ${again.total < 300 ? 'PASS' : 'MISS'})`;
  console.log(`\n${line}`);
  testInfo.annotations.push({ type: 'speed', description: line });
  await shot(page, testInfo, 'runs_widget');

  // sort by a metric: the best run first
  await widget.locator('.widget-dropdown', { hasText: 'sort by' }).locator('select').selectOption('metric acc');
  await expect(widget.locator('tr[data-run]').first()).toContainText('acc=0.96');
  // filter by a param and a metric, typed as a user types it (the filter applies on Enter)
  const filter = widget.locator('.widget-text', { hasText: 'filter' }).locator('input');
  await filter.fill('depth=3, acc>0.9');
  await filter.press('Enter');
  await expect(widget.locator('tr[data-run]').first()).toContainText('depth=3');
  const kept = await widget.locator('tr[data-run]').count();
  expect(kept).toBeGreaterThan(0);
  expect(kept).toBeLessThan(ROWS);
  // tick two runs and compare them (the button from the keyboard)
  const pick = widget.locator('.widget-select-multiple select');
  await pick.selectOption([{ index: 0 }, { index: 1 }]);
  await widget.getByRole('button', { name: 'compare ticked runs' }).focus();
  await page.keyboard.press('Enter');
  await expect(widget.locator('.mlops-note code')).toContainText('%mlops compare');
  await expect(widget.locator('table', { hasText: 'values differ' })).toBeVisible();
  await expect(widget.locator('svg.mlops-chart rect').first()).toBeVisible();
  await shot(page, testInfo, 'runs_widget_compared');
});

/** Press `key` on the selected cell and time, in the page, until the widget's rows are in the DOM (ms). */
async function timedRun(page: Page, key: string): Promise<{ total: number }> {
  await page.evaluate(() => {
    const w = window as any;
    w.mlopsTimes = new Promise(resolve => {
      const t0 = performance.now();
      const rows = () => document.querySelectorAll('.mlops-runs tr[data-run]').length;
      let cleared = rows() === 0; // a re-run clears the old rows first
      const watch = new MutationObserver(() => {
        const n = rows();
        cleared = cleared || n === 0;
        if (cleared && n >= 200) {
          watch.disconnect();
          resolve({ total: performance.now() - t0 });
        }
      });
      watch.observe(document.body, { childList: true, subtree: true });
      setTimeout(() => resolve({ total: NaN }), 60_000); // asserted below: the rows are there
    });
  });
  await page.keyboard.press(key);
  return await page.evaluate(() => (window as any).mlopsTimes);
}
