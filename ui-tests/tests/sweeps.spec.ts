/** The Sweeps tab: a real Ray Tune sweep run by the lab's kernel, live while it runs, then the best trial. */
import { expect, needRoutes, notebook, openPanel, runCells, shot, test } from './lab';

test('the sweeps panel shows the live trial table and the best', async ({ page }, testInfo) => {
  needRoutes('sweeps');
  notebook('sweep.ipynb', [
    '%load_ext mlops_jupyter',
    '%%mlops sweep --space "x=grid(1, 2, 3)" --samples 1 --metric score --mode max --concurrency 1\n' +
      'import time\ntime.sleep(3)\nscore = x / 10'
  ]);
  const panel = await openPanel(page, 'sweep.ipynb', 'sweeps');
  await expect(panel.getByTestId('mlops-sweeps')).toContainText('No sweeps yet', { timeout: 20_000 });
  await runCells(page, 1);
  await page.locator('.jp-CodeCell').nth(1).locator('.jp-InputPrompt').click();
  await page.keyboard.press('Shift+Enter');
  const live = panel.locator(".mlops-sweep[data-live='true']");
  await expect(live).toBeVisible({ timeout: 120_000 });
  await expect(live.locator('.mlops-trials tbody tr').first()).toBeVisible({ timeout: 60_000 });
  await shot(page, testInfo, 'sweep_live');
  const done = panel.locator(".mlops-sweep[data-live='false']").first();
  await expect(done.locator('.mlops-trials tbody tr')).toHaveCount(3, { timeout: 180_000 });
  await expect(done.getByTestId('mlops-sweep-best')).toContainText('score=0.3', { timeout: 60_000 });
  await expect(done.locator('.mlops-best-row')).toContainText('3');
  await shot(page, testInfo, 'sweep_done');
});
