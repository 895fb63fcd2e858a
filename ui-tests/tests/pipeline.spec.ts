/** The Pipeline tab: export a tagged notebook, run it with a live log; a run's model becomes a serving package,
 * which is tested and built into an image from the panel. */
import * as fs from 'fs';
import * as path from 'path';
import {
  expect,
  needRoutes,
  notebook,
  openNotebook,
  openPanel,
  openSidebar,
  ROOT,
  runCells,
  seed,
  shot,
  test
} from './lab';

test('the pipeline panel exports the notebook and lists its steps', async ({ page }, testInfo) => {
  needRoutes('pipeline', 'pipeline/export');
  notebook('pipe.ipynb', [
    ['rows = 10', ['parameters']],
    ['data = list(range(rows))', ['step:load']],
    ['total = sum(data)', ['step:train']]
  ]);
  const panel = await openPanel(page, 'pipe.ipynb', 'pipeline');
  const pipeline = panel.getByTestId('mlops-pipeline');
  await expect(pipeline.getByTestId('mlops-pipeline-out')).toHaveValue('pipe-pipeline');
  await pipeline.getByTestId('mlops-pipeline-export').click();
  const steps = pipeline.getByTestId('mlops-pipeline-steps').locator('.mlops-step');
  await expect(steps).toHaveCount(2, { timeout: 60_000 });
  await expect(steps.nth(0)).toContainText('load');
  await expect(steps.nth(1)).toContainText('train');
  expect(fs.existsSync(path.join(ROOT, 'pipe-pipeline', 'dvc.yaml'))).toBe(true);
  await expect(steps.nth(0)).toHaveAttribute('data-state', 'never');
  // the DAG: a box per step coloured by its state, the edge named by the variable handed over
  const dag = pipeline.getByTestId('mlops-pipeline-dag');
  await expect(dag.locator('g.step')).toHaveCount(2);
  await expect(dag.locator('g.step[data-step="load"]')).toHaveAttribute('data-state', 'never run');
  await expect(dag.locator('g.edge[data-from="load"][data-to="train"]')).toContainText('data');
  await shot(page, testInfo, 'pipeline');

  // run it: the log shows while it runs, then every step is fresh
  await pipeline.getByTestId('mlops-pipeline-run').click();
  const log = pipeline.getByTestId('mlops-pipeline-log');
  await expect(log).toBeVisible({ timeout: 30_000 });
  await expect(log).toContainText('last run succeeded', { timeout: 180_000 });
  await expect(steps.nth(0)).toHaveAttribute('data-state', 'fresh');
  await expect(steps.nth(1)).toHaveAttribute('data-state', 'fresh');
  const train = dag.locator('g.step[data-step="train"]');
  await expect(train).toHaveAttribute('data-state', 'fresh');
  await expect(train.locator('rect')).toHaveAttribute('fill', '#dcfce7');
  await shot(page, testInfo, 'pipeline_run');

  // a click on a step's box opens the notebook that step executed
  await train.click();
  await expect(page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', { hasText: 'train.ipynb' })).toBeVisible({
    timeout: 30_000
  });
});

test('the pipeline DAG shows a failed step and the step it stopped', async ({ page }, testInfo) => {
  needRoutes('pipeline', 'pipeline/export', 'pipeline/run');
  notebook('broken.ipynb', [
    ['xs = [1, 2]', ['step:load']],
    ["raise ValueError('no model today')\nmodel = sum(xs)", ['step:train']],
    ['score = model * 2', ['step:score']]
  ]);
  const panel = await openPanel(page, 'broken.ipynb', 'pipeline');
  const pipeline = panel.getByTestId('mlops-pipeline');
  await pipeline.getByTestId('mlops-pipeline-export').click();
  const dag = pipeline.getByTestId('mlops-pipeline-dag');
  await expect(dag.locator('g.step')).toHaveCount(3, { timeout: 60_000 });
  await pipeline.getByTestId('mlops-pipeline-run').click();
  await expect(pipeline.getByTestId('mlops-pipeline-log')).toContainText('last run failed', { timeout: 180_000 });
  await expect(dag.locator('g.step[data-step="load"]')).toHaveAttribute('data-state', 'fresh');
  await expect(dag.locator('g.step[data-step="train"]')).toHaveAttribute('data-state', 'failed');
  await expect(dag.locator('g.step[data-step="train"] rect')).toHaveAttribute('fill', '#fee2e2');
  await expect(dag.locator('g.step[data-step="score"]')).toHaveAttribute('data-state', 'never run');
  await shot(page, testInfo, 'pipeline_failed');
});

test("a run's model becomes a serving package from its row", async ({ page }, testInfo) => {
  needRoutes('serving/generate');
  notebook('serve.ipynb', [
    '%load_ext mlops_jupyter',
    '%%mlops run --name iris --metrics acc\nimport mlflow\nfrom sklearn.datasets import load_iris\n' +
      'from sklearn.linear_model import LogisticRegression\n' +
      'X, y = load_iris(return_X_y=True, as_frame=True)\n' +
      'model = LogisticRegression(max_iter=300).fit(X, y)\nacc = model.score(X, y)\n' +
      "mlflow.sklearn.log_model(model, name='model', input_example=X.head(3), pip_requirements=['scikit-learn'])"
  ]);
  await openNotebook(page, 'serve.ipynb');
  await runCells(page, 2);
  const panel = await openSidebar(page);
  const row = panel.locator('.mlops-run-row', { hasText: 'iris' });
  await expect(row.locator('.mlops-status')).toHaveText('FINISHED', { timeout: 60_000 });
  const runId = await row.getAttribute('data-run-id');
  await row.hover();
  await row.getByRole('button', { name: /serve the model/ }).click(); // opens the pipeline tab's form
  const serving = panel.getByTestId('mlops-serving');
  await expect(serving.getByTestId('mlops-serving-run')).toHaveValue(runId!);
  await expect(serving.getByTestId('mlops-serving-out')).toHaveValue('serve-serving');
  await serving.getByTestId('mlops-serving-generate').click();
  await expect(serving.getByTestId('mlops-serving-note')).toContainText('serve-serving', {
    timeout: 120_000
  });
  expect(fs.existsSync(path.join(ROOT, 'serve-serving', 'Dockerfile'))).toBe(true);
  await shot(page, testInfo, 'serving');
});

test('a serving package shows its tests and image, and Build makes the image', async ({ page }, testInfo) => {
  test.setTimeout(600_000); // the package's tests, then a real image build (buildah, cached base)
  needRoutes('serving', 'serving/build');
  const made = seed('package', [ROOT, 'built-serving']);
  notebook('build.ipynb', ['x = 1']);
  const panel = await openPanel(page, 'build.ipynb', 'pipeline');
  const serving = panel.getByTestId('mlops-serving');
  await serving.getByTestId('mlops-serving-out').fill(made.folder);
  await serving.getByTestId('mlops-serving-out').press('Enter');
  const pkg = serving.getByTestId('mlops-package');
  await expect(pkg).toContainText('iris-serving', { timeout: 30_000 });
  await expect(pkg.getByTestId('mlops-package-tests')).toContainText('not run yet');
  await expect(pkg.getByTestId('mlops-package-image')).toContainText('no image built yet');
  await pkg.getByTestId('mlops-package-base').fill(made.base);
  await pkg.getByTestId('mlops-package-build').click();
  const log = pkg.getByTestId('mlops-package-log');
  await expect(log).toContainText('building', { timeout: 30_000 });
  await expect(pkg.getByTestId('mlops-package-build')).toBeDisabled();
  await shot(page, testInfo, 'serving_building');
  await expect(log).toContainText(/last build (succeeded|failed)/, { timeout: 540_000 });
  await expect(log).toContainText('last build succeeded', { timeout: 1_000 });
  await expect(pkg.getByTestId('mlops-package-tests')).toHaveText(/^tests: \d+ passed in [\d.]+s$/);
  await expect(pkg.getByTestId('mlops-package-image')).toContainText('iris-serving:');
  await expect(pkg.getByTestId('mlops-package-image')).toContainText('MB');
  await expect(pkg.getByTestId('mlops-package-build')).toHaveText('Build again');
  expect(fs.existsSync(path.join(ROOT, 'built-serving', 'build.json'))).toBe(true);
  await shot(page, testInfo, 'serving_built');
});
