/** Which cells make the sidebar start the kernel's Ray early: the kernel's own rule (tracking/notebook.py). */
import { isLocalSweep } from '../src/prestart';

test('a local sweep cell is recognised, a remote one or any other cell is not', () => {
  expect(isLocalSweep('%%mlops sweep --space "x=grid(1, 2)"\nscore = x')).toBe(true);
  expect(isLocalSweep('\n  %%mlops sweep --samples 4\n')).toBe(true);
  expect(isLocalSweep('%%mlops sweep --space "x=grid(1)" --address ray://head:10001\nscore = x')).toBe(false);
  expect(isLocalSweep('%%mlops run\nx = 1')).toBe(false);
  expect(isLocalSweep('# %%mlops sweep\nx = 1')).toBe(false);
  expect(isLocalSweep('x = 1\n%%mlops sweep')).toBe(false);
});
