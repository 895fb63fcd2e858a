/** The tag editor reads and writes cell tags as export does (mlops_jupyter/pipeline/tags.py). */
import * as fs from 'fs';
import * as path from 'path';

import { ALIASES, fieldOf, FLAGS, formatTags, parseTags } from '../src/tags';

/** A constant of pipeline/tags.py (a dict or tuple of strings), read from the Python source itself. */
function pythonConstant(name: string): unknown {
  const source = fs.readFileSync(path.join(__dirname, '..', '..', 'mlops_jupyter', 'pipeline', 'tags.py'), 'utf8');
  const line = source.split('\n').find(l => l.startsWith(`${name} = `));
  if (!line) {
    throw new Error(`${name} is not in pipeline/tags.py`);
  }
  const literal = line
    .slice(name.length + 3)
    .replace(/#.*$/, '')
    .trim();
  return JSON.parse(literal.replace(/^\(/, '[').replace(/,?\s*\)$/, ']'));
}

describe('tags', () => {
  it("reads Kale's names as export does: the same aliases as pipeline/tags.py", () => {
    expect(ALIASES).toEqual(pythonConstant('ALIASES'));
  });

  it('knows the same plain flags as pipeline/tags.py', () => {
    expect([...FLAGS]).toEqual(pythonConstant('PLAIN'));
  });

  it('parses every kind of tag, aliases resolved, and keeps tags that are not ours', () => {
    const parsed = parseTags([
      'block:train',
      'prev:prepare',
      'after:load',
      'model:clf',
      'deps:data/train.csv',
      'resources:gpu=1',
      'resources:cpu=4',
      'limit:memory:8G',
      'pipeline-metrics',
      'skip',
      'raises-exception'
    ]);
    expect(parsed).toEqual({
      step: 'train',
      after: ['prepare', 'load'],
      model: 'clf',
      flags: ['metrics', 'skip'],
      deps: ['data/train.csv'],
      resources: 'gpu=1;cpu=4',
      limits: ['limit:memory:8G'],
      other: ['raises-exception']
    });
  });

  it('writes our names back, other tags first and untouched, and round-trips', () => {
    const tags = formatTags(parseTags(['raises-exception', 'pipeline-parameters', 'block: prep ', 'prev:load']));
    expect(tags).toEqual(['raises-exception', 'step:prep', 'after:load', 'parameters']);
    expect(formatTags(parseTags(tags))).toEqual(tags);
  });

  it('drops empty fields and spaces in resources, and writes no comma (nbformat forbids one in a tag)', () => {
    const parsed = parseTags(['step:a']);
    expect(formatTags({ ...parsed, step: ' ', after: ['', ' b '], resources: 'gpu=1, cpu=2' })).toEqual([
      'after:b',
      'resources:gpu=1;cpu=2'
    ]);
    expect(formatTags(parseTags(['resources:gpu=1,memory=8G']))).toEqual(['resources:gpu=1;memory=8G']);
  });

  it.each([
    ['deps:missing.csv: the step reads no such file', 'deps'],
    ['resources: gpu must be a whole number', 'resources'],
    ['after:nowhere names no step', 'after'],
    ['a cycle: a -> b -> a', 'after'],
    ["model:clf is not assigned in step 'train'", 'model'],
    ["step 'x y' is not a valid name", 'step'],
    ['an unknown tag', 'flags']
  ])('puts the message %p beside the %p field', (message, field) => {
    expect(fieldOf(message)).toBe(field);
  });
});
