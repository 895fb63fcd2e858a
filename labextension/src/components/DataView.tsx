import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { MlopsModel } from '../model';
import { statusOf } from '../request';
import { ISnapshotVersion } from '../tokens';
import { ErrorLine, formatSize, formatTime, useAction, usePolled } from './common';

async function confirm(title: string, body: string, label: string): Promise<boolean> {
  const result = await showDialog({
    title,
    body,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label })]
  });
  return result.button.accept;
}

/** Snapshotted paths, their versions with the runs that read each, and restore. */
export function DataView(props: { model: MlopsModel }): JSX.Element {
  const { model } = props;
  const path = model.path;
  const { data, error, reload } = usePolled(
    () => model.snapshots(),
    () => 0,
    [path]
  );
  const [note, setNote] = React.useState<string | null>(null);
  const { busy, failure, run } = useAction();

  const restore = async (target: string, version: ISnapshotVersion) => {
    const short = version.rev.slice(0, 7);
    const what = `${target} at ${short}${version.message ? ` ("${version.message}")` : ''}`;
    if (!(await confirm(`Restore ${target}?`, `Put ${what} back in the workspace.`, 'Restore'))) {
      return;
    }
    setNote(null);
    await run('restore', async () => {
      let reply;
      try {
        reply = await model.restore(target, version.rev, false);
      } catch (err) {
        if (statusOf(err) !== 409) {
          throw err;
        }
        const again = await confirm(
          `${target} has changes that are not snapshotted`,
          `${(err as Error).message}\n\nDiscard them and restore ${what}?`,
          'Discard and restore'
        );
        if (!again) {
          return;
        }
        reply = await model.restore(target, version.rev, true);
      }
      setNote(`Restored ${reply.target} to ${reply.rev.slice(0, 7)}${reply.message ? `: ${reply.message}` : ''}`);
      reload();
    });
  };

  return (
    <div className="mlops-data" data-testid="mlops-data">
      <div className="mlops-toolbar">
        <span className="mlops-toolbar-text">
          {data ? `${data.paths.length} snapshotted path${data.paths.length === 1 ? '' : 's'}` : 'loading…'}
        </span>
        <button type="button" className="mlops-button" title="Re-read the snapshots" onClick={reload}>
          ↻
        </button>
      </div>
      <ErrorLine error={error ?? failure} testid="mlops-data-error" />
      {note && (
        <div className="mlops-note" role="status" data-testid="mlops-data-note">
          {note}
        </div>
      )}
      <div className="mlops-body">
        {data && !data.paths.length && (
          <div className="mlops-empty">
            No snapshots yet: <code>%mlops snapshot data/train.csv -m "first version"</code>
          </div>
        )}
        {data?.paths.map(entry => (
          <section className="mlops-snapshot-path" key={entry.path} data-path={entry.path}>
            <div className="mlops-section-title">
              <span>{entry.path}</span>
              <span className="mlops-muted">{entry.versions.length} versions</span>
            </div>
            <ul className="mlops-versions">
              {entry.versions.map(version => (
                <li
                  className={`mlops-version${version.current ? ' mlops-current' : ''}`}
                  key={version.rev}
                  data-rev={version.rev}
                >
                  <div className="mlops-version-head">
                    <code title={version.rev}>{version.rev.slice(0, 7)}</code>
                    <span className="mlops-version-message">{version.message}</span>
                    {version.current ? (
                      <span className="mlops-chip" title="the workspace holds this version">
                        current
                      </span>
                    ) : (
                      <button
                        type="button"
                        className="mlops-button"
                        disabled={!!busy}
                        aria-label={`restore ${entry.path} to ${version.rev.slice(0, 7)}`}
                        onClick={() => void restore(entry.path, version)}
                      >
                        restore
                      </button>
                    )}
                  </div>
                  <div className="mlops-muted">
                    {formatTime(version.time)} · {formatSize(version.size)}
                    {version.nfiles ? ` · ${version.nfiles} files` : ''} · md5 {version.md5.slice(0, 8)}
                  </div>
                  {version.runs.length > 0 && (
                    <div className="mlops-version-runs" title="tracked runs that read this version">
                      read by:{' '}
                      {version.runs.map(run => (
                        <span className="mlops-chip" key={run.run_id} title={run.run_id}>
                          {run.run_name ?? run.run_id.slice(0, 8)}
                        </span>
                      ))}
                    </div>
                  )}
                </li>
              ))}
            </ul>
          </section>
        ))}
      </div>
    </div>
  );
}
