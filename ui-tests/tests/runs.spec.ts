/**
 * The Runs tab: a notebook's runs grouped by cell, refreshed live; a cell run in Lab becomes a run that
 * reaches its cell, carries a badge, and compares with another.
 */
import * as path from 'path';
import {
  expect,
  getJson,
  notebook,
  openNotebook,
  openPanel,
  openSidebar,
  ROOT,
  runCells,
  seedRuns,
  shot,
  test
} from './lab';

test("the sidebar lists the notebook's runs", async ({ page, request }, testInfo) => {
  // the server side must be there too, else the panel can only show an error
  const listed = await getJson(request, 'mlops/runs?path=demo.ipynb');
  expect(listed.runs.map((r: any) => r.run_name)).toEqual(['tuned', 'baseline']);

  const panel = await openPanel(page, 'demo.ipynb');
  const rows = panel.locator('.mlops-run-row');
  await expect(rows).toHaveCount(2, { timeout: 20_000 });
  await expect(rows.nth(0)).toContainText('tuned');
  await expect(rows.nth(0)).toContainText('acc=0.93');
  await expect(rows.nth(0)).toContainText('lr=0.01');
  await expect(rows.nth(0).locator('.mlops-status')).toHaveText('FINISHED');
  await expect(rows.nth(1)).toContainText('baseline');
  await expect(rows.nth(1)).toContainText('acc=0.81');
  // seeded runs name cells that are not in this notebook: labelled as such, one group each
  await expect(panel.locator('.mlops-cell-group')).toHaveCount(2);
  await expect(panel.locator('.mlops-cell-label').first()).toContainText('not in this notebook');
  await expect(panel.locator('.mlops-footer')).toContainText(
    'mlflow ui --backend-store-uri sqlite:///'
  );

  // a run finished while the panel is open shows up with the next poll (every 3 s), in its cell's group
  // it read hidden state, and its clean replay differed: both show on its row
  seedRuns('demo.ipynb', [
    {
      name: 'live',
      start: 1_700_000_120_000,
      metrics: { acc: 0.95 },
      tags: {
        'mlops.hidden_state': 'depends on a cell below it, run out of order: [3]',
        'mlops.replayed': 'differ: acc by 0.1 (10.53%) · replayed by run 0123abcd'
      }
    }
  ]);
  await expect(rows).toHaveCount(3, { timeout: 15_000 });
  await expect(rows.nth(0)).toContainText('live');
  await expect(rows.nth(0).getByTestId('mlops-hidden-state')).toHaveAttribute(
    'title',
    'This run depends on a cell below it, run out of order: [3]'
  );
  await expect(rows.nth(0).getByTestId('mlops-replayed')).toHaveText('replayed ✗');
  await expect(rows.nth(1).getByTestId('mlops-hidden-state')).toHaveCount(0);
  await expect(
    panel.locator('.mlops-cell-group').first().locator('.mlops-run-row')
  ).toHaveCount(2);
  await shot(page, testInfo, 'sidebar');
});

test('a tracked cell run in Lab shows up, reaches its cell and compares', async ({
  page,
  request,
  consoleErrors
}, testInfo) => {
  // end to end: Lab starts the kernel (JPY_SESSION_NAME), sends the cell id, the run shows up with its
  // metric and a badge on its cell; clicking it selects the cell; two runs compare
  const cellIds = notebook('live.ipynb', [
    '%load_ext mlops_jupyter',
    '%%mlops run --name in-lab --metrics f1,acc\nlr = 0.1\nacc = 0.77\nf1 = 0.7',
    "%%mlops run --name curve --metrics acc\nimport mlflow\nlr = 0.5\n" +
      "for step in range(4):\n    mlflow.log_metric('loss', 1 / (step + 1), step=step)\nacc = 0.81",
    "print('not tracked')",
    '%%mlops run --name slow --metrics acc\nimport time\ntime.sleep(8)\nacc = 0.5'
  ]);
  await openNotebook(page, 'live.ipynb');
  await runCells(page, 4);
  await expect(page.locator('.mlops-run-line').first()).toContainText('artifacts', {
    timeout: 60_000
  });
  await shot(page, testInfo, 'tracked_cells');

  const panel = await openSidebar(page);
  const rows = panel.locator('.mlops-run-row');
  await expect(rows).toHaveCount(2, { timeout: 20_000 });
  await expect(panel.locator('.mlops-cell-group')).toHaveCount(2);
  const first = page.locator('.mlops-run-row', { hasText: 'in-lab' });
  await expect(first).toContainText('acc=0.77');
  await expect(first).toContainText('lr=0.1');
  await expect(first.locator('.mlops-status')).toHaveText('FINISHED');
  // the group is labelled with the cell's execution count and first line after the magic
  await expect(
    panel.locator('.mlops-cell-group', { has: first }).locator('.mlops-cell-label')
  ).toContainText(/\[2\]\s*lr = 0.1/);

  const cells = page.locator('.jp-Notebook .jp-Cell');
  const badges = page.getByTestId('mlops-cell-badge');
  await expect(badges).toHaveCount(2, { timeout: 10_000 }); // tracked cells only
  await expect(cells.nth(1).getByTestId('mlops-cell-badge')).toContainText('FINISHED');
  // the badge's metric is the first the cell's --metrics names (f1), not the first by name (acc)
  await expect(cells.nth(1).getByTestId('mlops-cell-badge')).toContainText('f1=0.7');
  await expect(cells.nth(2).getByTestId('mlops-cell-badge')).toContainText('acc=0.81');
  await expect(cells.nth(0).getByTestId('mlops-cell-badge')).toHaveCount(0);
  await expect(cells.nth(3).getByTestId('mlops-cell-badge')).toHaveCount(0);
  await shot(page, testInfo, 'runs_by_cell');

  // clicking a run scrolls to its cell and selects it (the last cell was active)
  await first.locator('.mlops-run-name').click();
  await expect(cells.nth(1)).toHaveClass(/\bjp-mod-active\b/);
  await expect(page.locator('.jp-Notebook .jp-Cell.jp-mod-active')).toContainText('--name in-lab');
  await shot(page, testInfo, 'run_reaches_cell');

  // two runs checked: params diff (lr differs), metrics table, a chart
  await rows.nth(0).locator('.mlops-run-check').check();
  await rows.nth(1).locator('.mlops-run-check').check();
  const compare = panel.getByTestId('mlops-compare');
  await expect(compare).toBeVisible();
  await expect(compare.locator("tr.mlops-differs[data-key='lr']")).toBeVisible({ timeout: 20_000 });
  await expect(compare.locator("tr.mlops-differs[data-key='lr']")).toContainText('0.5');
  await expect(compare.locator("tr[data-key='acc']")).toContainText('0.77');
  const chart = compare.getByTestId('mlops-chart');
  await expect(chart.locator('rect.mlops-bar')).toHaveCount(2);
  // loss was logged at 4 steps by one run: its chart draws lines
  await compare.locator('select').selectOption('loss');
  await expect(chart).toHaveAttribute('data-kind', 'lines');
  await expect(chart.locator('polyline')).toHaveCount(1);
  await shot(page, testInfo, 'compare');

  // live refresh: a cell that runs for a while shows RUNNING in the list and on its badge, then FINISHED
  await cells.nth(4).locator('.jp-InputPrompt').click();
  await page.keyboard.press('Shift+Enter');
  const slow = panel.locator('.mlops-run-row', { hasText: 'slow' });
  await expect(slow.locator('.mlops-status')).toHaveText('RUNNING', { timeout: 30_000 });
  await expect(cells.nth(4).getByTestId('mlops-cell-badge')).toContainText('RUNNING');
  await shot(page, testInfo, 'running');
  await expect(slow.locator('.mlops-status')).toHaveText('FINISHED', { timeout: 60_000 });
  await expect(cells.nth(4).getByTestId('mlops-cell-badge')).toContainText('acc=0.5');
  expect(
    consoleErrors.filter(e => e.toLowerCase().includes('mlops')),
    consoleErrors.join('\n')
  ).toEqual([]);

  const listed = await getJson(request, 'mlops/runs?path=live.ipynb');
  const inLab = listed.runs.filter((r: any) => r.run_name === 'in-lab');
  expect(inLab).toHaveLength(1);
  expect(inLab[0].notebook).toBe(path.join(ROOT, 'live.ipynb'));
  expect(inLab[0].cell_id).toBe(cellIds[1]);
});

test('the refresh intervals are settings, editable in Settings', async ({ page, request }) => {
  const settings = await getJson(request, 'lab/api/settings/mlops-jupyter:plugin');
  expect(settings.schema.properties.refreshInterval.default).toBe(3000);
  expect(settings.schema.properties.liveRefreshInterval.default).toBe(1000);
  await page.evaluate(async () => {
    await (window as any).jupyterapp.commands.execute('settingeditor:open', { query: 'MLOps' });
  });
  await expect(page.getByText('Refresh interval (ms)', { exact: true })).toBeVisible({ timeout: 20_000 });
  await expect(page.getByText('Live refresh interval (ms)', { exact: true })).toBeVisible();
});
