/** The Tags tab: the active cell's pipeline tags, checked with export's own parser as they are edited. */
import * as fs from 'fs';
import * as path from 'path';
import { expect, needRoutes, notebook, openPanel, ROOT, shot, test } from './lab';

function savedTags(rel: string): (string[] | null)[] {
  const nb = JSON.parse(fs.readFileSync(path.join(ROOT, rel), 'utf-8'));
  return nb.cells.map((c: any) => c.metadata.tags ?? null);
}

test('the tag editor writes pipeline tags and shows validation errors', async ({ page }, testInfo) => {
  needRoutes('pipeline/validate');
  notebook('tags.ipynb', [
    ['import math', ['imports']],
    ['x = 1', ['block:load']], // Kale's name for step: read as step
    'y = x + 1'
  ]);
  const panel = await openPanel(page, 'tags.ipynb', 'tags');
  const cells = page.locator('.jp-Notebook .jp-Cell');
  await cells.nth(1).locator('.jp-InputPrompt').click();
  const editor = panel.getByTestId('mlops-tag-editor');
  await expect(editor.getByTestId('mlops-tag-step')).toHaveValue('load');

  await cells.nth(2).locator('.jp-InputPrompt').click();
  const step = editor.getByTestId('mlops-tag-step');
  await step.fill('train');
  await step.press('Enter');
  await expect(editor).toContainText('step:train');
  await expect(editor.getByTestId('mlops-tag-summary')).toContainText('load → train', {
    timeout: 10_000
  });

  const after = editor.getByTestId('mlops-tag-after');
  await after.fill('unknown');
  await after.press('Enter');
  const error = editor.getByTestId('mlops-tag-error-after');
  await expect(error).toContainText('unknown', { timeout: 10_000 });
  await shot(page, testInfo, 'tag_error');

  await after.fill('load');
  await after.press('Enter');
  await expect(error).toHaveCount(0, { timeout: 10_000 });
  await editor.getByTestId('mlops-tag-metrics').check();
  await expect(editor.getByTestId('mlops-tag-summary')).toContainText('load → train', {
    timeout: 10_000
  });
  await shot(page, testInfo, 'tags');

  // saved, the notebook holds the tags (Kale's block: left as it was on the cell not edited)
  await page.keyboard.press('Control+s');
  await expect
    .poll(() => savedTags('tags.ipynb')[2]?.includes('metrics') ?? false, { timeout: 10_000 })
    .toBe(true);
  expect(savedTags('tags.ipynb')).toEqual([
    ['imports'],
    ['block:load'],
    ['step:train', 'after:load', 'metrics']
  ]);
});

test('each cell shows a chip with its step and roles, updated when a tag changes', async ({ page }, testInfo) => {
  notebook('chips.ipynb', [
    ['import math', ['imports']],
    ['x = 1', ['block:load']],
    'y = x + 1', // untagged: joins the step above it
    ['z = y * 2', ['step:train', 'metrics']],
    'w = z'
  ]);
  const panel = await openPanel(page, 'chips.ipynb', 'tags');
  const cells = page.locator('.jp-Notebook .jp-Cell');
  const chips = (i: number) => cells.nth(i).getByTestId('mlops-cell-chips');
  await expect(chips(0)).toHaveText('imports');
  await expect(chips(0).locator('.mlops-chip-step')).toHaveCount(0);
  await expect(chips(1).locator('.mlops-chip-step')).toHaveText('load');
  await expect(chips(2).locator('.mlops-chip-step')).toHaveText('load');
  await expect(chips(3).locator('.mlops-chip-step')).toHaveText('train');
  await expect(chips(3).locator('.mlops-chip-role')).toHaveText('metrics');
  await expect(chips(4).locator('.mlops-chip-step')).toHaveText('train');
  // one colour per step
  await expect(chips(1).locator('.mlops-chip-step')).toHaveClass(/mlops-step-0/);
  await expect(chips(3).locator('.mlops-chip-step')).toHaveClass(/mlops-step-1/);
  await shot(page, testInfo, 'cell_chips');

  // a step tag set in the editor: that cell and the untagged one after it change step at once
  await cells.nth(2).locator('.jp-InputPrompt').click();
  const step = panel.getByTestId('mlops-tag-editor').getByTestId('mlops-tag-step');
  await step.fill('prep');
  await step.press('Enter');
  await expect(chips(2).locator('.mlops-chip-step')).toHaveText('prep');
  await expect(chips(2).locator('.mlops-chip-step')).toHaveClass(/mlops-step-1/);
  await expect(chips(3).locator('.mlops-chip-step')).toHaveClass(/mlops-step-2/);
  await expect(chips(1).locator('.mlops-chip-step')).toHaveText('load');
  await shot(page, testInfo, 'cell_chips_changed');
});
