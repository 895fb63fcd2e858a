/** The Sweeps tab: a real Ray Tune sweep run by the lab's kernel, live while it runs, then the best trial. */
import { expect, needRoutes, notebook, openNotebook, openPanel, runCells, shot, test } from './lab';

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

test("writing a local sweep cell starts the kernel's Ray before the sweep runs", async ({ page }) => {
  notebook('early.ipynb', [
    '%load_ext mlops_jupyter',
    'x = 1',
    'from mlops_jupyter.sweep import runner\nprint("ray up:", runner.prestarted.wait(150))'
  ]);
  await openNotebook(page, 'early.ipynb');
  await runCells(page, 1); // the saved notebook holds no sweep: nothing starts as the extension loads
  // the user turns the second cell into a sweep, typing it: the sidebar asks the kernel to start Ray now
  expect(await page.notebook.setCell(1, 'code', '%%mlops sweep --metric score --mode max')).toBe(true);
  await page.locator('.jp-CodeCell').nth(2).locator('.jp-InputPrompt').click();
  await page.keyboard.press('Shift+Enter');
  await expect(page.locator('.jp-CodeCell').nth(2).locator('.jp-OutputArea')).toContainText('ray up: True', {
    timeout: 180_000
  });
  // this kernel's Ray goes with it, not left running beside the next tests
  await page.evaluate(async () => {
    const sessions = (window as any).jupyterapp.serviceManager.sessions;
    for (const s of Array.from(sessions.running()) as any[]) {
      if (s.path.endsWith('early.ipynb')) {
        await sessions.shutdown(s.id);
      }
    }
  });
});
