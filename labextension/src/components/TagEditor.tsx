import { Cell } from '@jupyterlab/cells';
import { INotebookTracker } from '@jupyterlab/notebook';
import * as React from 'react';

import { MlopsModel } from '../model';
import { revealCell } from '../notebook';
import { fieldOf, FLAGS, formatTags, IPipelineTags, parseTags, TagField } from '../tags';
import { IValidateCell, IValidation } from '../tokens';
import { ErrorLine, Field } from './common';

/** The editor's text fields, as typed. */
interface IDraft {
  step: string;
  after: string;
  model: string;
  deps: string;
  resources: string;
}

/** The editor's text fields, in order; lists are typed comma separated. */
const TEXT_FIELDS: { key: keyof IDraft; label: string; placeholder: string }[] = [
  { key: 'step', label: 'step', placeholder: 'name (starts a step here)' },
  { key: 'after', label: 'after', placeholder: 'step names, comma separated' },
  { key: 'model', label: 'model', placeholder: 'model name (serving)' },
  { key: 'deps', label: 'reads', placeholder: 'files it reads that its code does not name (deps:)' },
  { key: 'resources', label: 'resources', placeholder: 'gpu=1;cpu=4;memory=8G' }
];

function tagsOf(cell: Cell | null): string[] {
  const tags = cell?.model.getMetadata('tags');
  return Array.isArray(tags) ? tags.map(String) : [];
}

/** Every code cell's id, position and raw tags: what pipeline/validate checks as a whole. */
function notebookTags(tracker: INotebookTracker): IValidateCell[] {
  const cells = tracker.currentWidget?.content.model?.cells;
  const out: IValidateCell[] = [];
  if (cells) {
    for (let index = 0; index < cells.length; index++) {
      const cell = cells.get(index);
      if (cell.type === 'code') {
        const raw = cell.getMetadata('tags');
        const tags: string[] = Array.isArray(raw) ? raw.map(String) : [];
        const entry: IValidateCell = { id: cell.id, index, tags };
        if (parseTags(tags).flags.includes('parameters')) {
          entry.source = cell.sharedModel.getSource();
        }
        out.push(entry);
      }
    }
  }
  return out;
}

/** Re-render on the active cell changing, or any cell's metadata changing (tags edited elsewhere). */
function useNotebookTick(tracker: INotebookTracker): number {
  const [tick, setTick] = React.useState(0);
  React.useEffect(() => {
    const bump = () => setTick(t => t + 1);
    let watched: Cell | null = null;
    const watch = () => {
      watched?.model.metadataChanged.disconnect(bump);
      watched = tracker.activeCell;
      watched?.model.metadataChanged.connect(bump);
      bump();
    };
    tracker.activeCellChanged.connect(watch);
    tracker.currentChanged.connect(watch);
    watch();
    return () => {
      tracker.activeCellChanged.disconnect(watch);
      tracker.currentChanged.disconnect(watch);
      watched?.model.metadataChanged.disconnect(bump);
    };
  }, [tracker]);
  return tick;
}

/** The pipeline tags of the active cell, written to its metadata.tags and checked against the notebook. */
export function TagEditor(props: { model: MlopsModel; tracker: INotebookTracker }): JSX.Element {
  const { tracker, model } = props;
  useNotebookTick(tracker);
  const cell = tracker.activeCell;
  const tags = tagsOf(cell);
  const parsed = parseTags(tags);
  const [draft, setDraft] = React.useState<IDraft>({ step: '', after: '', model: '', deps: '', resources: '' });
  const [validation, setValidation] = React.useState<IValidation | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const tagKey = JSON.stringify(tags);
  const cellId = cell?.model.id ?? null;

  // the text fields follow the cell (another cell selected, tags changed elsewhere)
  React.useEffect(() => {
    setDraft({
      step: parsed.step,
      after: parsed.after.join(', '),
      model: parsed.model,
      deps: parsed.deps.join(', '),
      resources: parsed.resources
    });
  }, [cellId, tagKey]);

  // check the whole notebook's tags whenever they may have changed
  const cells = notebookTags(tracker);
  const cellsKey = JSON.stringify(cells);
  React.useEffect(() => {
    if (!cells.length) {
      setValidation(null);
      return;
    }
    let alive = true;
    const timer = window.setTimeout(() => {
      model.validate(cells).then(
        reply => {
          if (alive) {
            setValidation(reply);
            setError(null);
          }
        },
        err => alive && setError((err as Error).message)
      );
    }, 250);
    return () => {
      alive = false;
      window.clearTimeout(timer);
    };
  }, [cellsKey]);

  if (!cell || cell.model.type !== 'code') {
    return (
      <div className="mlops-message">
        {cell ? 'Pipeline tags go on code cells: select one.' : 'Select a code cell to edit its pipeline tags.'}
      </div>
    );
  }

  const write = (next: IPipelineTags) => {
    const value = formatTags(next);
    if (JSON.stringify(value) === tagKey) {
      return; // unchanged: no metadata write, no dirty notebook
    }
    if (value.length) {
      cell.model.setMetadata('tags', value);
    } else {
      cell.model.deleteMetadata('tags');
    }
  };
  const commitText = () =>
    write({
      ...parsed,
      step: draft.step,
      model: draft.model,
      after: draft.after
        .split(',')
        .map(a => a.trim())
        .filter(Boolean),
      deps: draft.deps
        .split(',')
        .map(d => d.trim())
        .filter(Boolean),
      resources: draft.resources
    });

  const index = tracker.currentWidget?.content.activeCellIndex ?? -1;
  const mine = (validation?.errors ?? []).filter(e => (e.cell_id ? e.cell_id === cellId : e.index === index));
  const others = (validation?.errors ?? []).filter(e => !mine.includes(e));
  const errorsFor = (field: TagField) =>
    mine
      .filter(e => fieldOf(e.message) === field)
      .map((e, i) => (
        <div className="mlops-field-error" role="alert" key={i} data-testid={`mlops-tag-error-${field}`}>
          {e.message}
        </div>
      ));
  const steps = validation?.steps ?? [];

  return (
    <div className="mlops-tags" data-testid="mlops-tag-editor">
      <div className="mlops-hint">
        cell {index} · tags: <code>{tags.join(' ') || 'none'}</code>
      </div>
      {TEXT_FIELDS.map(f => (
        <React.Fragment key={f.key}>
          <Field
            label={f.label}
            testid={`mlops-tag-${f.key}`}
            list={f.key === 'after' ? 'mlops-known-steps' : undefined}
            placeholder={f.placeholder}
            value={draft[f.key]}
            onChange={value => setDraft({ ...draft, [f.key]: value })}
            onCommit={commitText}
          />
          {f.key === 'resources' && parsed.limits.length > 0 && (
            <div className="mlops-hint">Kale: {parsed.limits.join(' ')}</div>
          )}
          {errorsFor(f.key)}
        </React.Fragment>
      ))}
      <datalist id="mlops-known-steps">
        {steps.map(step => (
          <option key={step} value={step} />
        ))}
      </datalist>
      <fieldset className="mlops-flags">
        <legend>role</legend>
        {FLAGS.map(flag => (
          <label key={flag} className="mlops-flag">
            <input
              type="checkbox"
              data-testid={`mlops-tag-${flag}`}
              checked={parsed.flags.includes(flag)}
              onChange={() =>
                write({
                  ...parsed,
                  flags: parsed.flags.includes(flag) ? parsed.flags.filter(f => f !== flag) : [...parsed.flags, flag]
                })
              }
            />
            {flag}
          </label>
        ))}
      </fieldset>
      {errorsFor('flags')}
      <ErrorLine error={error} />
      <div className="mlops-pipeline-summary" data-testid="mlops-tag-summary">
        {validation?.ok ? (
          <>pipeline: {steps.join(' → ') || '(one step)'}</>
        ) : (
          validation && `${validation.errors.length} problem${validation.errors.length === 1 ? '' : 's'} in the tags`
        )}
      </div>
      {others.length > 0 && (
        <ul className="mlops-other-errors">
          {others.map((e, i) => (
            <li key={i}>
              <button
                type="button"
                className="mlops-link-button"
                onClick={() => {
                  const panel = tracker.currentWidget;
                  if (panel && e.cell_id) {
                    revealCell(panel, e.cell_id);
                  }
                }}
              >
                cell [{e.index ?? '?'}]
              </button>{' '}
              {e.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
