/** The Models tab: each environment's alias, promotion after a confirmation (the gates shown in the history),
 * no Promote button where the user may not move the alias, and a rollback. */
import { expect, needRoutes, openPanel, ROOT, seed, shot, test } from './lab';

test('the models panel promotes after a confirmation and rolls back', async ({ page }, testInfo) => {
  needRoutes('models', 'models/promote', 'models/rollback');
  // iris v1 (a stump) and v2 from two tracked runs of a committed notebook; staging and prod stores of their own
  const rel = seed('models', [ROOT]).notebook as string;
  const panel = await openPanel(page, rel, 'models');
  const iris = panel.locator(".mlops-registered-model[data-model='iris']");
  const env = (name: string) => iris.locator(`.mlops-model-env[data-env='${name}']`);
  await expect(env('dev').locator('.mlops-version')).toHaveCount(2, { timeout: 30_000 });
  await expect(env('staging')).toContainText('no @staging');
  // prod's promoters name someone else: nothing offers to move @prod
  await expect(iris.getByRole('button', { name: /to prod/ })).toHaveCount(0);
  await shot(page, testInfo, 'models');

  for (const version of ['1', '2']) {
    await iris.getByRole('button', { name: `promote iris v${version} to staging` }).click();
    const dialog = page.locator('.jp-Dialog');
    await expect(dialog).toContainText(`Promote iris v${version} to staging?`);
    await dialog.getByRole('button', { name: 'Promote' }).click();
    await expect(panel.getByTestId('mlops-models-note')).toContainText(`@staging in staging is version ${version}`, {
      timeout: 60_000
    });
  }
  await expect(panel.getByTestId('alias-iris-staging')).toHaveText('@staging → v2');
  const history = panel.getByTestId('mlops-model-history');
  await expect(history.locator(".mlops-model-record[data-action='promote']")).toHaveCount(2);
  await expect(history.locator(".mlops-model-record[data-action='promote']").first()).toContainText('was v1');
  await expect(history.locator("[data-gate='signature']").first()).toContainText('signature ✓');
  await shot(page, testInfo, 'models_promoted');

  await env('staging').getByRole('button', { name: 'roll back iris in staging' }).click();
  await page.locator('.jp-Dialog').getByRole('button', { name: 'Roll back' }).click();
  await expect(panel.getByTestId('alias-iris-staging')).toHaveText('@staging → v1', { timeout: 60_000 });
  await expect(history.locator(".mlops-model-record[data-action='rollback']")).toHaveCount(1);
});
