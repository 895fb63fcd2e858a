/** The Monitor tab: a serving package beside the notebook, its logged traffic against its model's reference:
 * the verdict, each column's drift over time, the latest alerts, and another span on request. */
import { expect, needRoutes, openPanel, ROOT, seed, shot, test } from './lab';

test('the monitor panel shows drift per column over time and the latest alerts', async ({ page }, testInfo) => {
  needRoutes('monitor');
  // three hours of traffic: two unchanged, then x0 shifted and a new city for the last hour
  const rel = seed('monitor', [ROOT]).notebook as string;
  const panel = await openPanel(page, rel, 'monitor');
  const verdict = panel.getByTestId('mlops-monitor-verdict');
  await expect(verdict).toContainText('drift in 2 of 10 columns', { timeout: 30_000 });
  await expect(verdict).toContainText('1800 rows');
  await expect(panel.getByTestId('mlops-monitor-source')).toHaveValue('watching/pkg');
  const drifted = panel.locator('.mlops-drift-row.mlops-drifted');
  await expect(drifted).toHaveCount(2);
  await expect(panel.locator(".mlops-drift-row[data-column='city']")).toContainText('new: tokyo');
  // one point per hour window: the line over the dashed threshold
  await expect(panel.locator(".mlops-drift-row[data-column='x0'] polyline")).toHaveCount(1);
  const alerts = panel.getByTestId('mlops-monitor-alerts');
  await expect(alerts.locator('li')).toHaveCount(1);
  await expect(alerts).toContainText('x0');
  await shot(page, testInfo, 'monitor');

  // the last hour alone: still drift, now on its 600 rows
  await panel.getByLabel('span').selectOption('1h');
  await expect(verdict).toContainText('600 rows', { timeout: 30_000 });
});
