import { Dialog, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import { MlopsModel } from '../model';
import { IGenerated, IPipeline } from '../tokens';
import {
  ErrorLine,
  Field,
  formatSize,
  formatTime,
  hasCapability,
  JobLog,
  Unavailable,
  useAction,
  usePolled
} from './common';

/** Export the notebook as a pipeline, see each step's state, run it; generate a serving package. */
export function PipelineView(props: {
  model: MlopsModel;
  serveRun: string;
  pipeline: boolean;
  onOpen: (path: string) => void;
  onOpenReport: (path: string) => void;
}): JSX.Element {
  const { model } = props;
  return (
    <div className="mlops-pipeline-view">
      {props.pipeline ? (
        <PipelineSection model={model} onOpen={props.onOpen} onOpenReport={props.onOpenReport} />
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

/** An `out` folder field (default: beside the notebook, <stem>-SUFFIX): what is typed, and the folder it
 * commits to on Enter or blur, which the section's state is read for. */
function useOutFolder(model: MlopsModel, suffix: string) {
  const [out, setOut] = React.useState(model.defaultFolder(suffix));
  const [folder, setFolder] = React.useState(out);
  React.useEffect(() => {
    const initial = model.defaultFolder(suffix);
    setOut(initial);
    setFolder(initial);
  }, [model.path]);
  const commit = () => setFolder(out.trim() || model.defaultFolder(suffix));
  return { out, setOut, folder, setFolder, commit };
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
  return (
    <div
      className="mlops-dag"
      data-testid="mlops-pipeline-dag"
      onClick={onClick}
      dangerouslySetInnerHTML={{ __html: props.svg }}
    />
  );
}

/** A pipeline that fits a model: Retrain (after a confirmation), the newest retrain's decision, and Report. */
function RetrainSection(props: {
  model: MlopsModel;
  data: IPipeline;
  folder: string;
  busy: string | null;
  act: (what: string, call: () => Promise<unknown>) => Promise<void>;
  onOpenReport: (path: string) => void;
}): JSX.Element {
  const { model, data, folder, busy, act } = props;
  const [baseline, setBaseline] = React.useState('');
  const [note, setNote] = React.useState<string | null>(null);
  const retraining = !!data.retrain?.running;
  const retrain = async () => {
    const ok = await showDialog({
      title: 'Retrain?',
      body:
        'Snapshot the newest data, run the stale steps, register each model fitted anew and promote it to the ' +
        'next environment if it passes the gates against the current holder.',
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Retrain' })]
    });
    if (ok.button.accept) {
      await act('retrain', () => model.retrainPipeline(folder));
    }
  };
  const report = () =>
    act('report', async () => {
      const written = await model.reportPipeline(folder, baseline.trim());
      const against = written.baseline ? `against ${written.baseline}` : 'with no baseline';
      setNote(`${written.report}: ${against}, ${written.plots} plots${written.note ? `. ${written.note}` : ''}`);
      props.onOpenReport(written.report);
    });
  const last = data.last_retrain;
  return (
    <div className="mlops-retrain" data-testid="mlops-retrain">
      <Field
        label="baseline"
        testid="mlops-report-baseline"
        placeholder="branch, NAME@ALIAS or run (default: main)"
        value={baseline}
        onChange={setBaseline}
      />
      <div className="mlops-actions">
        <button
          type="button"
          className="mlops-button"
          data-testid="mlops-pipeline-retrain"
          disabled={!!busy || retraining || !!data.run?.running}
          title="mlops retrain: new data, stale steps, challenger vs champion"
          onClick={() => void retrain()}
        >
          {retraining ? 'retraining…' : 'Retrain'}
        </button>
        <button
          type="button"
          className="mlops-button"
          data-testid="mlops-pipeline-report"
          disabled={!!busy}
          title="mlops report: the newest run against the baseline, opened in a tab"
          onClick={() => void report()}
        >
          {busy === 'report' ? 'writing…' : 'Report'}
        </button>
      </div>
      {note && (
        <div className="mlops-note" role="status" data-testid="mlops-report-note">
          {note}
        </div>
      )}
      {last && (
        <div className="mlops-muted" data-testid="mlops-last-retrain">
          last retrain {formatTime(last.start_time)}:{' '}
          {last.decisions
            .map(d => `${d.model} ${d.decision}${d.challenger ? ` v${d.challenger}` : ''} (${d.reason ?? ''})`)
            .join(' · ')}
        </div>
      )}
      {data.retrain && <JobLog job={data.retrain} testid="mlops-retrain-log" going="retraining" noun="retrain" />}
    </div>
  );
}

/** Where a step's latest run went (its Ray node and GPUs) and what its tags ask for. */
function StepPlace(props: { step: IPipeline['steps'][number] }): JSX.Element | null {
  const { node, resources } = props.step;
  const asks = Object.entries(resources ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(' ');
  if (!node && !asks) {
    return null;
  }
  const gpus = node?.gpus ? ` · GPU ${Array.isArray(node.gpus) ? node.gpus.join(',') : node.gpus}` : '';
  return (
    <span className="mlops-step-place">
      {asks && (
        <span className="mlops-chip" title="what the step's resources tags ask for">
          {asks}
        </span>
      )}
      {node && (
        <span className="mlops-chip" data-testid="mlops-step-node" title={`Ray node ${node.id}`}>
          on {node.ip}
          {gpus}
        </span>
      )}
    </span>
  );
}

function PipelineSection(props: {
  model: MlopsModel;
  onOpen: (path: string) => void;
  onOpenReport: (path: string) => void;
}): JSX.Element {
  const { model } = props;
  const { out, setOut, folder, commit } = useOutFolder(model, 'pipeline');
  const [address, setAddress] = React.useState('');
  const { busy, failure, run } = useAction();
  const { data, error, reload } = usePolled(
    () => model.pipeline(folder),
    last => (last?.run?.running || last?.retrain?.running ? model.intervals.live : 0),
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
        {data && (
          <span className="mlops-muted">
            {data.exported ? (data.outdated ? 'notebook changed since export' : 'exported') : 'not exported yet'}
          </span>
        )}
      </div>
      <Field label="out" testid="mlops-pipeline-out" value={out} onChange={setOut} onCommit={commit} />
      <Field
        label="cluster"
        testid="mlops-pipeline-address"
        placeholder="this machine (or ray://head:10001, auto)"
        value={address}
        onChange={setAddress}
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
          onClick={() => void act('run', () => model.runPipeline(folder, false, address))}
        >
          {running ? 'running…' : 'Run'}
        </button>
        <button
          type="button"
          className="mlops-button"
          disabled={!!busy || running || !data?.exported}
          title="Run every step, fresh or not (--force)"
          onClick={() => void act('run', () => model.runPipeline(folder, true, address))}
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
              {step.reason && step.state !== 'never' && (
                <span className="mlops-muted mlops-step-reason">{step.reason}</span>
              )}
              <StepPlace step={step} />
            </li>
          ))}
        </ol>
      )}
      {data && data.models.length > 0 && (
        <div className="mlops-muted">models: {data.models.map(m => `${m.name} (step ${m.step})`).join(', ')}</div>
      )}
      {data?.run && <JobLog job={data.run} testid="mlops-pipeline-log" going="running" noun="run" />}
      {data && data.exported && data.models.length > 0 && (
        <RetrainSection
          model={model}
          data={data}
          folder={folder}
          busy={busy}
          act={act}
          onOpenReport={props.onOpenReport}
        />
      )}
    </section>
  );
}

function ServingSection(props: { model: MlopsModel; runId: string }): JSX.Element {
  const { model } = props;
  const [runId, setRunId] = React.useState(props.runId);
  const { out, setOut, folder, setFolder, commit } = useOutFolder(model, 'serving');
  const [name, setName] = React.useState('');
  const { busy, failure, run } = useAction();
  const [result, setResult] = React.useState<IGenerated | null>(null);
  React.useEffect(() => setRunId(props.runId), [props.runId]);

  const generate = () =>
    run('generate', async () => {
      setResult(null);
      const made = await model.generateServing(runId.trim(), out.trim(), name.trim());
      setResult(made);
      setFolder(made.folder);
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
      <Field label="out" testid="mlops-serving-out" value={out} onChange={setOut} onCommit={commit} />
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
          {result.name}: {result.folder} (from {result.model_uri}). Serve it:{' '}
          <code>mlops serve run {result.folder}</code>
        </div>
      )}
      <PackageState model={model} folder={folder} />
    </section>
  );
}

/** A generated package: its tests and last image, and Build (`mlops serve build`: tests, then the image). */
function PackageState(props: { model: MlopsModel; folder: string }): JSX.Element | null {
  const { model, folder } = props;
  const [base, setBase] = React.useState('');
  const { busy, failure, run } = useAction();
  const { data, error, reload } = usePolled(
    () => model.serving(folder),
    last => (last?.build?.running ? model.intervals.live : 0),
    [model.path, folder]
  );
  if (!data?.package) {
    return error ? <ErrorLine error={error} testid="mlops-package-error" /> : null;
  }
  const building = !!data.build?.running;
  const image = data.image;
  const build = () =>
    run('build', async () => {
      await model.buildServing(folder, base.trim());
      reload();
    });
  return (
    <div className="mlops-package" data-testid="mlops-package">
      <div className="mlops-section-title">
        <span>
          {data.name} {data.version}
        </span>
        <span className="mlops-muted">{data.folder}</span>
      </div>
      <div className="mlops-muted" data-testid="mlops-package-tests">
        tests: {building ? 'running…' : image ? image.tests : 'not run yet'}
      </div>
      <div data-testid="mlops-package-image">
        {image ? (
          <>
            image <code>{image.tag}</code> · {formatSize(image.size_bytes)} · built with {image.engine} in{' '}
            {Math.round(image.build_seconds)} s{image.pushed ? ` · pushed to ${image.pushed}` : ''}
          </>
        ) : (
          <span className="mlops-muted">no image built yet</span>
        )}
      </div>
      <Field
        label="base"
        testid="mlops-package-base"
        placeholder="base image (default: python of the model)"
        value={base}
        onChange={setBase}
      />
      <div className="mlops-actions">
        <button
          type="button"
          className="mlops-button"
          data-testid="mlops-package-build"
          disabled={!!busy || building}
          title="mlops serve build: the package's tests, then its image"
          onClick={() => void build()}
        >
          {building ? 'building…' : image ? 'Build again' : 'Build'}
        </button>
      </div>
      <ErrorLine error={failure ?? error} testid="mlops-package-error" />
      {data.build && <JobLog job={data.build} testid="mlops-package-log" going="building" noun="build" />}
    </div>
  );
}
