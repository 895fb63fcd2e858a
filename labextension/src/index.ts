import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker } from '@jupyterlab/notebook';

import { mlopsIcon } from './icon';
import { PLUGIN_ID, SIDEBAR_ID } from './tokens';
import { RunsPanel } from './widget';

/** Adds the MLOps sidebar (left area) listing the current notebook's tracked runs. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'MLOps sidebar: the current notebook\'s tracked MLflow runs.',
  autoStart: true,
  requires: [INotebookTracker],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker) => {
    const panel = new RunsPanel(tracker);
    panel.id = SIDEBAR_ID;
    panel.title.icon = mlopsIcon;
    panel.title.caption = 'MLOps: tracked runs of this notebook';
    panel.title.label = 'MLOps';
    app.shell.add(panel, 'left', { rank: 900 });
  }
};

export default plugin;
