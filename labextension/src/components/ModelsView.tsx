import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { MlopsModel } from '../model';
import { IAuditRecord, IGate, IModels, IRegisteredModel } from '../tokens';
import { ErrorLine, useAction, usePolled } from './common';

async function confirm(title: string, body: string, label: string): Promise<boolean> {
  const result = await showDialog({ title, body, buttons: [Dialog.cancelButton(), Dialog.okButton({ label })] });
  return result.button.accept;
}

/** The environments (in their configured order) and, for one model name, what each holds. */
function byName(data: IModels): Map<string, Map<string, IRegisteredModel>> {
  const out = new Map<string, Map<string, IRegisteredModel>>();
  for (const m of data.models) {
    if (!m.name) {
      continue; // an environment that did not answer (shown on its own line)
    }
    if (!out.has(m.name)) {
      out.set(m.name, new Map());
    }
    out.get(m.name)!.set(m.env, m);
  }
  return out;
}

function GateChips(props: { gates: IGate[] }): JSX.Element {
  return (
    <span className="mlops-gates">
      {props.gates.map(g => (
        <span
          key={g.gate}
          className={`mlops-chip mlops-gate mlops-gate-${g.status}`}
          title={g.detail ?? ''}
          data-gate={g.gate}
        >
          {g.gate} {g.status === 'passed' ? '✓' : g.status === 'failed' ? '✗' : g.status}
        </span>
      ))}
    </span>
  );
}

function History(props: { records: IAuditRecord[] }): JSX.Element {
  return (
    <ul className="mlops-model-history" data-testid="mlops-model-history">
      {[...props.records].reverse().map(r => (
        <li key={`${r.t}-${r.action}-${r.env}`} className="mlops-model-record" data-action={r.action}>
          <div>
            <span className="mlops-muted">{r.when}</span> {r.who} {r.action}{' '}
            <b>
              v{r.version}
              {r.action === 'register' ? '' : ` @${r.env}`}
            </b>
            {r.previous ? <span className="mlops-muted"> (was v{r.previous})</span> : null}
          </div>
          {r.gates && r.gates.length > 0 && <GateChips gates={r.gates} />}
          {r.reason ? <div className="mlops-muted">reason: {r.reason}</div> : null}
        </li>
      ))}
    </ul>
  );
}

/**
 * Registered models across the project's environments: each environment's versions and the one its alias
 * points at, Promote (after the gates, on confirmation) and Rollback where the user may move that alias,
 * and a model's audit history with every promotion's gate results.
 */
export function ModelsView(props: { model: MlopsModel }): JSX.Element {
  const { model } = props;
  const [open, setOpen] = React.useState<string | null>(null);
  const { data, error, reload } = usePolled(
    () => model.models(open ?? undefined),
    () => 0,
    [model.path, open]
  );
  const [note, setNote] = React.useState<string | null>(null);
  const { busy, failure, run } = useAction();
  const envs = data?.environments ?? [];
  const may = new Map(envs.map(e => [e.name, e.may_move]));

  const promote = async (name: string, version: string, from: string, to: string) => {
    const ref = from === 'dev' ? `${name}/${version}` : `${name}@${from}`;
    const ok = await confirm(
      `Promote ${name} v${version} to ${to}?`,
      `The gates (signature, metric, tests, lineage) run first; @${to} moves only if every gate passes.`,
      'Promote'
    );
    if (!ok) {
      return;
    }
    setNote(null);
    await run(`promote ${to}`, async () => {
      const moved = await model.promote(ref, to);
      setNote(moved.summary);
      setOpen(name);
      reload();
    });
  };

  const rollback = async (name: string, env: string, holder: string) => {
    if (
      !(await confirm(
        `Roll back ${name} in ${env}?`,
        `@${env} (now v${holder}) returns to its previous holder.`,
        'Roll back'
      ))
    ) {
      return;
    }
    setNote(null);
    await run(`rollback ${env}`, async () => {
      const moved = await model.rollback(name, env);
      setNote(moved.summary);
      setOpen(name);
      reload();
    });
  };

  const models = data ? byName(data) : new Map();
  const down = data?.models.filter(m => m.error) ?? [];
  return (
    <div className="mlops-models" data-testid="mlops-models">
      <div className="mlops-toolbar">
        <span className="mlops-toolbar-text">
          {data
            ? `${models.size} registered model${models.size === 1 ? '' : 's'} · ${envs.length} environments`
            : 'loading…'}
        </span>
        <button type="button" className="mlops-button" title="Re-read the registries" onClick={reload}>
          ↻
        </button>
      </div>
      <ErrorLine error={error ?? failure} testid="mlops-models-error" />
      {note && (
        <div className="mlops-note" role="status" data-testid="mlops-models-note">
          {note}
        </div>
      )}
      {down.map(m => (
        <div className="mlops-error" key={m.env}>
          {m.env} did not answer: {m.error}
        </div>
      ))}
      <div className="mlops-body">
        {data && !models.size && (
          <div className="mlops-empty">
            No registered models yet: <code>%mlops register RUN --model NAME</code>
          </div>
        )}
        {[...models.entries()].map(([name, where]) => (
          <section className="mlops-registered-model" key={name} data-model={name}>
            <div className="mlops-section-title">
              <span>{name}</span>
              <button
                type="button"
                className="mlops-button"
                aria-expanded={open === name}
                onClick={() => setOpen(open === name ? null : name)}
              >
                history
              </button>
            </div>
            {envs.map((env, i) => {
              const held = where.get(env.name);
              const holder = held?.aliases[env.name];
              const next = envs[i + 1];
              return (
                <div className="mlops-model-env" key={env.name} data-env={env.name}>
                  <div className="mlops-model-env-head">
                    <b>{env.name}</b>{' '}
                    {holder ? (
                      <span className="mlops-chip mlops-alias" data-testid={`alias-${name}-${env.name}`}>
                        @{env.name} → v{holder}
                      </span>
                    ) : (
                      <span className="mlops-muted">no @{env.name}</span>
                    )}
                    {holder && env.may_move && (
                      <button
                        type="button"
                        className="mlops-button"
                        disabled={!!busy}
                        aria-label={`roll back ${name} in ${env.name}`}
                        onClick={() => void rollback(name, env.name, holder)}
                      >
                        roll back
                      </button>
                    )}
                  </div>
                  <ul className="mlops-versions">
                    {(held?.versions ?? []).map((v: string) => (
                      <li className="mlops-version" key={v} data-version={v}>
                        <span>v{v}</span>
                        {next && may.get(next.name) && (env.name === 'dev' ? true : holder === v) && (
                          <button
                            type="button"
                            className="mlops-button"
                            disabled={!!busy}
                            aria-label={`promote ${name} v${v} to ${next.name}`}
                            onClick={() => void promote(name, v, env.name, next.name)}
                          >
                            promote to {next.name}
                          </button>
                        )}
                      </li>
                    ))}
                  </ul>
                </div>
              );
            })}
            {open === name && data?.history && <History records={data.history.records} />}
          </section>
        ))}
      </div>
    </div>
  );
}
