/** The Pipeline tab of a pipeline that fits a model: Retrain (after a confirmation) shows its decision, and
 * Report writes `mlops report` into the pipeline folder and opens it rendered in a tab. */
import { expect, needRoutes, openPanel, ROOT, seed, shot, test } from './lab';

test('the pipeline panel retrains, shows the decision and opens the report', async ({ page }, testInfo) => {
  needRoutes('pipeline/retrain', 'pipeline/report');
  const { notebook, out } = seed('retrain', [ROOT]);
  const panel = await openPanel(page, notebook, 'pipeline');
  const field = panel.getByTestId('mlops-pipeline-out');
  await field.fill(out);
  await field.press('Enter');
  const retrain = panel.getByTestId('mlops-pipeline-retrain');
  await expect(retrain).toBeEnabled({ timeout: 30_000 });
  await retrain.click();
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toContainText('Retrain?');
  await dialog.getByRole('button', { name: 'Retrain' }).click();
  const last = panel.getByTestId('mlops-last-retrain');
  await expect(last).toContainText('clf promoted v1 (@staging is version 1)', { timeout: 180_000 });
  await expect(panel.getByTestId('mlops-retrain-log')).toBeVisible();
  await shot(page, testInfo, 'retrained');

  await panel.getByTestId('mlops-report-baseline').fill('none');
  await panel.getByTestId('mlops-pipeline-report').click();
  await expect(panel.getByTestId('mlops-report-note')).toContainText('report/report.md: with no baseline', {
    timeout: 60_000
  });
  const rendered = page.locator('.jp-RenderedMarkdown', { hasText: 'Pipeline fit' });
  await expect(rendered).toBeVisible({ timeout: 30_000 });
  await expect(rendered.locator('table').first()).toContainText('fit.acc');
  await expect(rendered.locator('img')).toHaveCount(0); // one run alone: nothing to plot side by side
  await shot(page, testInfo, 'report');
});
