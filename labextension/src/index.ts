import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { mlopsIcon } from './icon';
import { MlopsModel } from './model';
import { updateBadges, updateChips } from './notebook';
import { watchSweeps } from './prestart';
import { PLUGIN_ID, SIDEBAR_ID } from './tokens';
import { MlopsSidebar } from './widget';

/** Adds the MLOps sidebar (left area) and a run badge on each tracked cell of the current notebook. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'MLOps sidebar: runs by cell, compare, pipeline tags, data, sweeps, pipelines, serving.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ISettingRegistry],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, registry: ISettingRegistry | null) => {
    const model = new MlopsModel(tracker);
    if (registry) {
      // Settings > MLOps: the refresh intervals, applied as they are edited
      void registry.load(PLUGIN_ID).then(
        settings => {
          const apply = () => {
            model.intervals = {
              idle: settings.get('refreshInterval').composite as number,
              live: settings.get('liveRefreshInterval').composite as number
            };
          };
          settings.changed.connect(apply);
          apply();
        },
        (reason: unknown) => console.warn('mlops-jupyter: settings not loaded, default refresh intervals', reason)
      );
    }
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
    const watch = (nb: NotebookPanel) => {
      watchChips(nb);
      watchSweeps(nb);
    };
    tracker.forEach(watch); // notebooks the restored layout opened before this plugin
    tracker.widgetAdded.connect((_, nb) => watch(nb));
  }
};

/** The step chips of `panel`'s cells, redrawn when a cell's tags change, cells come and go, or a cell is drawn. */
function watchChips(panel: NotebookPanel): void {
  let pending = 0;
  const refresh = () => {
    // one redraw per frame, however many signals arrive together (a paste of 50 cells)
    if (!pending) {
      pending = requestAnimationFrame(() => {
        pending = 0;
        if (!panel.isDisposed) {
          updateChips(panel);
        }
      });
    }
  };
  void panel.context.ready.then(() => {
    const cells = panel.content.model?.cells;
    if (!cells) {
      return;
    }
    for (const cell of cells) {
      cell.metadataChanged.connect(refresh);
    }
    cells.changed.connect((_, change) => {
      if (change.type === 'add') {
        change.newValues.forEach(cell => cell.metadataChanged.connect(refresh));
      }
      refresh();
    });
    panel.content.cellInViewportChanged.connect(refresh); // windowed: a cell scrolled into view is drawn now
    refresh();
  });
}

export default plugin;
