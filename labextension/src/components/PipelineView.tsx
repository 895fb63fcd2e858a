import * as React from 'react';

import { MlopsModel } from '../model';
import { IGenerated, IPipeline, LIVE_REFRESH_MS } from '../tokens';
import { ErrorLine, Field, hasCapability, Unavailable, useAction, usePolled } from './common';

/** Export the notebook as a pipeline, see each step's state, run it; generate a serving package. */
export function PipelineView(props: {
  model: MlopsModel;
  serveRun: string;
  pipeline: boolean;
  onOpen: (path: string) => void;
}): JSX.Element {
  const { model } = props;
  return (
    <div className="mlops-pipeline-view">
      {props.pipeline ? (
        <PipelineSection model={model} onOpen={props.onOpen} />
      ) : (
        <Unavailable capability="pipeline" what="Exporting a pipeline" />
      )}
      {hasCapability(model.status, 'serving') ? (
        <ServingSection model={model} runId={props.serveRun} />
      ) : (
        <Unavailable capability="serving" what="Generating a serving package" />
      )}
    </div>
  );
}

/**
 * The step DAG the server draws (pipeline.svg: our own markup, its text escaped), coloured by state and redrawn
 * while a run goes; a click on a step that has run opens its executed notebook.
 */
function PipelineDag(props: { svg: string; steps: IPipeline['steps']; onOpen: (path: string) => void }): JSX.Element {
  const { steps, onOpen } = props;
  const onClick = (event: React.MouseEvent) => {
    const box = (event.target as Element).closest('g.step');
    const step = steps.find(s => s.name === box?.getAttribute('data-step'));
    if (step?.notebook) {
      onOpen(step.notebook);
    }
  };
  return <div className="mlops-dag" data-testid="mlops-pipeline-dag" onClick={onClick} dangerouslySetInnerHTML={{ __html: props.svg }} />;
}

function PipelineSection(props: { model: MlopsModel; onOpen: (path: string) => void }): JSX.Element {
  const { model } = props;
  const [out, setOut] = React.useState(model.defaultFolder('pipeline'));
  const [folder, setFolder] = React.useState(out); // what the state below is read for (the field, once committed)
  const { busy, failure, run } = useAction();
  React.useEffect(() => {
    const initial = model.defaultFolder('pipeline');
    setOut(initial);
    setFolder(initial);
  }, [model.path]);
  const { data, error, reload } = usePolled(
    () => model.pipeline(folder),
    last => (last?.run?.running ? LIVE_REFRESH_MS : 0),
    [model.path, folder]
  );

  const act = (what: string, call: () => Promise<unknown>) =>
    run(what, async () => {
      await call();
      reload();
    });
  const running = !!data?.run?.running;

  return (
    <section className="mlops-pipeline" data-testid="mlops-pipeline">
      <div className="mlops-section-title">
        <span>Pipeline</span>
        {data && <span className="mlops-muted">{data.exported ? (data.outdated ? 'notebook changed since export' : 'exported') : 'not exported yet'}</span>}
      </div>
      <Field
        label="out"
        testid="mlops-pipeline-out"
        value={out}
        onChange={setOut}
        onCommit={() => setFolder(out.trim() || model.defaultFolder('pipeline'))}
      />
      <div className="mlops-actions">
        <button
          type="button"
          className="mlops-button mlops-primary"
          data-testid="mlops-pipeline-export"
          disabled={!!busy || running}
          onClick={() => void act('export', () => model.exportPipeline(out.trim() || folder))}
        >
          {busy === 'export' ? 'exporting…' : data?.exported ? 'Export again' : 'Export'}
        </button>
        <button
          type="button"
          className="mlops-button"
          data-testid="mlops-pipeline-run"
          disabled={!!busy || running || !data?.exported}
          title={data?.exported ? 'mlops pipeline run: only what changed' : 'Export first'}
          onClick={() => void act('run', () => model.runPipeline(folder, false))}
        >
          {running ? 'running…' : 'Run'}
        </button>
        <button
          type="button"
          className="mlops-button"
          disabled={!!busy || running || !data?.exported}
          title="Run every step, fresh or not (--force)"
          onClick={() => void act('run', () => model.runPipeline(folder, true))}
        >
          Run all
        </button>
      </div>
      <ErrorLine error={failure ?? error} testid="mlops-pipeline-error" />
      {data?.picture && <PipelineDag svg={data.picture} steps={data.steps} onOpen={props.onOpen} />}
      {data && data.steps.length > 0 && (
        <ol className="mlops-steps" data-testid="mlops-pipeline-steps">
          {data.steps.map(step => (
            <li key={step.name} className="mlops-step" data-state={step.state}>
              <span className={`mlops-step-state mlops-step-${step.state}`}>{step.state}</span>
              {step.notebook ? (
                <button
                  type="button"
                  className="mlops-link-button mlops-step-name"
                  title={`open ${step.notebook}`}
                  onClick={() => props.onOpen(step.notebook!)}
                >
                  {step.name}
                </button>
              ) : (
                <span className="mlops-step-name">{step.name}</span>
              )}
              {step.reason && step.state !== 'never' && <span className="mlops-muted mlops-step-reason">{step.reason}</span>}
            </li>
          ))}
        </ol>
      )}
      {data && data.models.length > 0 && (
        <div className="mlops-muted">
          models: {data.models.map(m => `${m.name} (step ${m.step})`).join(', ')}
        </div>
      )}
      {data?.run && (
        <div className="mlops-pipeline-run" data-testid="mlops-pipeline-log">
          <div className="mlops-muted">
            {data.run.running ? 'running' : data.run.ok ? 'last run succeeded' : 'last run failed'}
            {data.run.summary ? `: ${data.run.summary}` : ''}
          </div>
          <pre className="mlops-log">{data.run.log.join('\n')}</pre>
        </div>
      )}
    </section>
  );
}

function ServingSection(props: { model: MlopsModel; runId: string }): JSX.Element {
  const { model } = props;
  const [runId, setRunId] = React.useState(props.runId);
  const [out, setOut] = React.useState(model.defaultFolder('serving'));
  const [name, setName] = React.useState('');
  const { busy, failure, run } = useAction();
  const [result, setResult] = React.useState<IGenerated | null>(null);
  React.useEffect(() => setRunId(props.runId), [props.runId]);
  React.useEffect(() => setOut(model.defaultFolder('serving')), [model.path]);

  const generate = () =>
    run('generate', async () => {
      setResult(null);
      setResult(await model.generateServing(runId.trim(), out.trim(), name.trim()));
    });
  return (
    <section className="mlops-serving" data-testid="mlops-serving">
      <div className="mlops-section-title">
        <span>Serving package</span>
      </div>
      <Field
        label="run"
        testid="mlops-serving-run"
        placeholder="run id (or a run's serve button)"
        value={runId}
        onChange={setRunId}
      />
      <Field label="out" testid="mlops-serving-out" value={out} onChange={setOut} />
      <Field label="name" placeholder="optional" value={name} onChange={setName} />
      <div className="mlops-actions">
        <button
          type="button"
          className="mlops-button mlops-primary"
          data-testid="mlops-serving-generate"
          disabled={!!busy || !runId.trim() || !out.trim()}
          onClick={() => void generate()}
        >
          {busy ? 'generating…' : 'Generate'}
        </button>
      </div>
      <ErrorLine error={failure} testid="mlops-serving-error" />
      {result && (
        <div className="mlops-note" role="status" data-testid="mlops-serving-note">
          {result.name}: {result.folder} (from {result.model_uri}). Serve it: <code>mlops serve run {result.folder}</code>
        </div>
      )}
    </section>
  );
}
