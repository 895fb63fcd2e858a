import { JupyterFrontEnd } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { hasCapability, Unavailable } from './components/common';
import { DataView } from './components/DataView';
import { ModelsView } from './components/ModelsView';
import { MonitorView } from './components/MonitorView';
import { PipelineView } from './components/PipelineView';
import { RunsView } from './components/RunsView';
import { SweepsView } from './components/SweepsView';
import { TagEditor } from './components/TagEditor';
import { MlopsModel } from './model';
import { revealCell } from './notebook';
import { Capability, EXTRAS, IRun } from './tokens';

type Tab = 'runs' | 'tags' | 'data' | 'sweeps' | 'pipeline' | 'models' | 'monitor';

const TABS: { id: Tab; label: string; needs: Capability }[] = [
  { id: 'runs', label: 'Runs', needs: 'tracking' },
  { id: 'tags', label: 'Tags', needs: 'pipeline' },
  { id: 'data', label: 'Data', needs: 'data' },
  { id: 'sweeps', label: 'Sweeps', needs: 'sweep' },
  { id: 'pipeline', label: 'Pipeline', needs: 'pipeline' },
  { id: 'models', label: 'Models', needs: 'tracking' },
  { id: 'monitor', label: 'Monitor', needs: 'serving' }
];

const WHAT: Record<Tab, string> = {
  runs: 'Tracking',
  tags: 'The pipeline tag editor',
  data: 'The data panel',
  sweeps: 'The sweeps panel',
  pipeline: 'The pipeline panel',
  models: 'The models panel',
  monitor: 'The monitor panel'
};

/**
 * The MLOps sidebar: the current notebook's runs, pipeline tags, data, sweeps and pipeline.
 * Only the shown tab polls; the runs list polls through the model (cheap 304s when unchanged).
 */
export class MlopsSidebar extends ReactWidget {
  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly tracker: INotebookTracker,
    readonly model: MlopsModel
  ) {
    super();
    this.addClass('mlops-panel');
    this.node.dataset.testid = 'mlops-sidebar';
  }

  /** Show a run in the runs tab (a cell badge was clicked). */
  showRun(run: IRun): void {
    this.app.shell.activateById(this.id);
    this.setState({ tab: 'runs', focusRun: run.run_id });
  }

  /** Scroll the notebook to the run's cell and select it. */
  reveal(run: IRun): void {
    const panel = this.tracker.currentWidget;
    if (panel && run.cell_id && revealCell(panel, run.cell_id)) {
      this.app.shell.activateById(panel.id);
    }
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => (
          <SidebarBody
            owner={this}
            tracker={this.tracker}
            model={this.model}
            state={this.state}
            setState={next => this.setState(next)}
          />
        )}
      </UseSignal>
    );
  }

  private setState(next: Partial<ISidebarState>): void {
    this.state = { ...this.state, ...next };
    this.update();
  }

  /** Row callbacks that stay the same object across renders, so unchanged rows are not re-rendered. */
  readonly onReveal = (run: IRun): void => this.reveal(run);
  readonly onServe = (run: IRun): void => this.setState({ tab: 'pipeline', serveRun: run.run_id });
  /** Open a file of the server root (a step's executed notebook) in the main area. */
  readonly onOpen = (path: string): void => void this.app.commands.execute('docmanager:open', { path });
  /** Open a Markdown report rendered (its plots beside it), in the main area. */
  readonly onOpenReport = (path: string): void =>
    void this.app.commands.execute('docmanager:open', { path, factory: 'Markdown Preview' });

  private state: ISidebarState = { tab: 'runs', focusRun: null, serveRun: '' };
}

interface ISidebarState {
  tab: Tab;
  focusRun: string | null;
  serveRun: string;
}

function SidebarBody(props: {
  owner: MlopsSidebar;
  tracker: INotebookTracker;
  model: MlopsModel;
  state: ISidebarState;
  setState: (next: Partial<ISidebarState>) => void;
}): JSX.Element {
  const { model, state, setState, owner } = props;
  const status = model.status;
  const path = model.path;
  const tab = state.tab;
  const enabled = (t: Tab) => hasCapability(status, TABS.find(x => x.id === t)!.needs);
  const onTabKey = (event: React.KeyboardEvent) => {
    // arrow keys move between tabs, as in Lab's own tab bars
    const i = TABS.findIndex(t => t.id === tab);
    const step = event.key === 'ArrowRight' ? 1 : event.key === 'ArrowLeft' ? -1 : 0;
    if (step) {
      const next = TABS[(i + step + TABS.length) % TABS.length].id;
      setState({ tab: next });
      (event.currentTarget.parentElement?.querySelector(`[data-tab="${next}"]`) as HTMLElement | null)?.focus();
    }
  };
  let body: JSX.Element;
  if (!path && tab !== 'runs') {
    body = <div className="mlops-message">Open a notebook first.</div>;
  } else if (!enabled(tab)) {
    body = <Unavailable capability={TABS.find(x => x.id === tab)!.needs} what={WHAT[tab]} />;
  } else if (tab === 'runs') {
    body = (
      <RunsView
        model={model}
        focusRun={state.focusRun}
        onReveal={owner.onReveal}
        onServe={hasCapability(status, 'serving') ? owner.onServe : undefined}
      />
    );
  } else if (tab === 'tags') {
    body = <TagEditor model={model} tracker={props.tracker} />;
  } else if (tab === 'data') {
    body = <DataView model={model} />;
  } else if (tab === 'sweeps') {
    body = <SweepsView model={model} />;
  } else if (tab === 'models') {
    body = <ModelsView model={model} />;
  } else if (tab === 'monitor') {
    body = <MonitorView model={model} />;
  } else {
    body = (
      <PipelineView
        model={model}
        serveRun={state.serveRun}
        pipeline={enabled('pipeline')}
        onOpen={owner.onOpen}
        onOpenReport={owner.onOpenReport}
      />
    );
  }
  return (
    <>
      <div className="mlops-header">MLOps</div>
      <div className="mlops-subtitle" title={path ?? ''}>
        {path ?? 'no notebook open'}
      </div>
      <div className="mlops-tabs" role="tablist" aria-label="MLOps panels">
        {TABS.map(t => (
          <button
            key={t.id}
            type="button"
            role="tab"
            data-tab={t.id}
            data-testid={`mlops-tab-${t.id}`}
            aria-selected={tab === t.id}
            tabIndex={tab === t.id ? 0 : -1}
            className={`mlops-tab${tab === t.id ? ' mlops-tab-active' : ''}${enabled(t.id) ? '' : ' mlops-tab-disabled'}`}
            title={enabled(t.id) ? t.label : `needs pip install '${EXTRAS[t.needs]}'`}
            onClick={() => setState({ tab: t.id })}
            onKeyDown={onTabKey}
          >
            {t.label}
          </button>
        ))}
      </div>
      <div className="mlops-tabpanel" role="tabpanel" data-testid={`mlops-panel-${tab}`}>
        {body}
      </div>
    </>
  );
}
