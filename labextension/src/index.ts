import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';

import { mlopsIcon } from './icon';
import { MlopsModel } from './model';
import { updateBadges } from './notebook';
import { PLUGIN_ID, SIDEBAR_ID } from './tokens';
import { MlopsSidebar } from './widget';

/** Adds the MLOps sidebar (left area) and a run badge on each tracked cell of the current notebook. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'MLOps sidebar: runs by cell, compare, pipeline tags, data, sweeps, pipelines, serving.',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker) => {
    const model = new MlopsModel(tracker);
    const panel = new MlopsSidebar(app, tracker, model);
    panel.id = SIDEBAR_ID;
    panel.title.icon = mlopsIcon;
    panel.title.caption = 'MLOps: runs, data, sweeps and pipelines of this notebook';
    panel.title.label = 'MLOps';
    app.shell.add(panel, 'left', { rank: 900 });

    const badges = () => {
      const current = tracker.currentWidget;
      const runs = model.runs;
      if (current && runs.data && runs.path === current.context.path) {
        updateBadges(current, runs.data.runs, run => panel.showRun(run));
      }
    };
    model.changed.connect(badges);
    model.polled.connect(badges);
  }
};

export default plugin;
