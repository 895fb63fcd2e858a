/** Pipeline cell tags (pipeline/tags.py): parsed for the editor, written back as the cell's tags. */

export const FLAGS = ['parameters', 'imports', 'functions', 'metrics', 'skip'] as const;
export type Flag = (typeof FLAGS)[number];

/** Kale's names, read as ours (a Kale-tagged notebook edits as it is). */
const ALIASES: Record<string, string> = {
  'pipeline-parameters': 'parameters',
  'pipeline-metrics': 'metrics',
  block: 'step',
  prev: 'after'
};

export interface IPipelineTags {
  step: string;
  after: string[];
  model: string;
  flags: Flag[];
  /** Tags that are not the pipeline's (Jupyter's own, other tools'): kept as they are. */
  other: string[];
}

export function parseTags(tags: readonly string[]): IPipelineTags {
  const parsed: IPipelineTags = { step: '', after: [], model: '', flags: [], other: [] };
  for (const raw of tags) {
    const tag = String(raw).trim();
    const colon = tag.indexOf(':');
    const head = colon >= 0 ? tag.slice(0, colon) : tag;
    const name = ALIASES[head] ?? head;
    const arg = colon >= 0 ? tag.slice(colon + 1).trim() : '';
    if (colon >= 0 && name === 'step') {
      parsed.step = arg;
    } else if (colon >= 0 && name === 'after') {
      parsed.after.push(arg);
    } else if (colon >= 0 && name === 'model') {
      parsed.model = arg;
    } else if (colon < 0 && (FLAGS as readonly string[]).includes(name)) {
      parsed.flags.push(name as Flag);
    } else {
      parsed.other.push(tag);
    }
  }
  return parsed;
}

/** The cell's tags for `parsed`: other tags first and untouched, pipeline tags in our names. */
export function formatTags(parsed: IPipelineTags): string[] {
  const tags = [...parsed.other];
  if (parsed.step.trim()) {
    tags.push(`step:${parsed.step.trim()}`);
  }
  for (const after of parsed.after.map(a => a.trim()).filter(Boolean)) {
    tags.push(`after:${after}`);
  }
  if (parsed.model.trim()) {
    tags.push(`model:${parsed.model.trim()}`);
  }
  for (const flag of FLAGS) {
    if (parsed.flags.includes(flag)) {
      tags.push(flag);
    }
  }
  return tags;
}

/** Which field of the editor a validation message is about (shown beside it). */
export function fieldOf(message: string): 'step' | 'after' | 'model' | 'flags' {
  const text = message.toLowerCase();
  if (/\bafter\b|\bprev\b|cycle/.test(text)) {
    return 'after';
  }
  if (/\bmodel\b/.test(text)) {
    return 'model';
  }
  if (/\bstep\b|\bblock\b/.test(text)) {
    return 'step';
  }
  return 'flags';
}
