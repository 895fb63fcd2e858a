/** The Data tab: a path's snapshots, restored after a confirmation (and a second one over unsaved changes). */
import * as fs from 'fs';
import { expect, needRoutes, openPanel, ROOT, seed, shot, test } from './lab';

test('the data panel restores a snapshot after confirmation', async ({ page }, testInfo) => {
  needRoutes('snapshots', 'restore');
  // data/train.csv snapshotted twice with the real core (DVC + git in the project)
  const data = seed('snapshots', [ROOT]).data as string;
  const panel = await openPanel(page, 'demo.ipynb', 'data');
  const entry = panel.locator(".mlops-snapshot-path[data-path='data/train.csv']");
  await expect(entry.locator('.mlops-version')).toHaveCount(2, { timeout: 20_000 });
  await expect(entry.locator('.mlops-version').nth(0)).toContainText('more rows');
  await expect(entry.locator('.mlops-version').nth(0)).toContainText('current');
  await shot(page, testInfo, 'data');

  await entry
    .locator('.mlops-version', { hasText: 'first rows' })
    .getByRole('button', { name: /restore/ })
    .click();
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toContainText('Restore data/train.csv?');
  await shot(page, testInfo, 'restore_dialog');
  await dialog.getByRole('button', { name: 'Restore' }).click();
  await expect(panel.getByTestId('mlops-data-note')).toContainText('Restored data/train.csv', {
    timeout: 30_000
  });
  expect(fs.readFileSync(data, 'utf-8')).toBe('x,y\n1,0\n');
  await expect(entry.locator('.mlops-version', { hasText: 'first rows' })).toContainText('current', {
    timeout: 20_000
  });

  // changes that were never snapshotted: the server says 409, the panel asks again before discarding
  fs.writeFileSync(data, 'x,y\nunsaved\n');
  await entry
    .locator('.mlops-version', { hasText: 'more rows' })
    .getByRole('button', { name: /restore/ })
    .click();
  await page.locator('.jp-Dialog').getByRole('button', { name: 'Restore' }).click();
  const again = page.locator('.jp-Dialog', { hasText: 'not snapshotted' });
  await expect(again).toBeVisible({ timeout: 30_000 });
  await shot(page, testInfo, 'restore_force');
  await again.getByRole('button', { name: 'Discard and restore' }).click();
  await expect(panel.getByTestId('mlops-data-note')).toContainText('Restored data/train.csv', {
    timeout: 30_000
  });
  expect(fs.readFileSync(data, 'utf-8')).toBe('x,y\n1,0\n2,1\n');
});
