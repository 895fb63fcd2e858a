/** Pipeline cell tags (pipeline/tags.py): parsed for the editor, written back as the cell's tags. */

export const FLAGS = ['parameters', 'imports', 'functions', 'metrics', 'skip'] as const;
export type Flag = (typeof FLAGS)[number];

/** Kale's names, read as ours (a Kale-tagged notebook edits as it is). */
export const ALIASES: Record<string, string> = {
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
  /** deps:PATH: files or folders the step reads that export cannot see in its code. */
  deps: string[];
  /** resources:gpu=1;cpu=4;memory=8G (ours), without the `resources:` prefix (a comma, which nbformat forbids in a
   * tag, is read as ';'). */
  resources: string;
  /** Kale's limit:KEY:VALUE tags, kept as they are (pipeline/tags.py reads them as resources). */
  limits: string[];
  /** Tags that are not the pipeline's (Jupyter's own, other tools'): kept as they are. */
  other: string[];
}

export function parseTags(tags: readonly string[]): IPipelineTags {
  const parsed: IPipelineTags = {
    step: '',
    after: [],
    model: '',
    flags: [],
    deps: [],
    resources: '',
    limits: [],
    other: []
  };
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
    } else if (colon >= 0 && name === 'deps') {
      parsed.deps.push(arg);
    } else if (colon >= 0 && name === 'resources') {
      parsed.resources = parsed.resources ? `${parsed.resources};${arg}` : arg;
    } else if (colon >= 0 && name === 'limit') {
      parsed.limits.push(tag);
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
  for (const dep of parsed.deps.map(d => d.trim()).filter(Boolean)) {
    tags.push(`deps:${dep}`);
  }
  if (parsed.resources.trim()) {
    tags.push(`resources:${parsed.resources.replace(/\s+/g, '').replace(/,/g, ';')}`);
  }
  tags.push(...parsed.limits);
  for (const flag of FLAGS) {
    if (parsed.flags.includes(flag)) {
      tags.push(flag);
    }
  }
  return tags;
}

export type TagField = 'step' | 'after' | 'model' | 'deps' | 'resources' | 'flags';

/** Which field of the editor a validation message is about (shown beside it). */
export function fieldOf(message: string): TagField {
  const text = message.toLowerCase();
  // before step/after: their messages say "the step reads", "both for step 'a'"
  if (/\bdeps:/.test(text)) {
    return 'deps';
  }
  if (/\bresources\b|\blimit:|\b(gpu|cpu|memory) '|asks for (gpu|cpu|memory)\b/.test(text)) {
    return 'resources';
  }
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
