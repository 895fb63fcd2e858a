import type { ICellModel } from '@jupyterlab/cells';
import type { NotebookPanel } from '@jupyterlab/notebook';

/** Whether a cell's source is a sweep that runs on the kernel's own machine (`%%mlops sweep` without --address),
 * as the kernel decides it for a saved notebook (tracking/notebook.py, sweeps_here). */
export function isLocalSweep(source: string): boolean {
  const first = source.trimStart().split('\n', 1)[0];
  return first.startsWith('%%mlops sweep') && !first.includes('--address');
}

// evaluated by the kernel as a user expression: nothing runs, nothing is printed or numbered; 'None' while the
// extension is not loaded in it (MlopsMagics.prestart_ray says what it did)
const ASK = "(lambda m: m and m.prestart_ray())(getattr(get_ipython(), '_mlops_magics', None))";
// a kernel without the extension is asked again on a later edit, at most this often
const RETRY_MS = 3000;

/**
 * Start the kernel's Ray in the background as soon as the user writes a local `%%mlops sweep` cell, so that
 * the first sweep finds it up (the extension does the same as it loads in a notebook that already holds one).
 * Once per kernel, after it answers; a restarted kernel is a new one.
 */
export function watchSweeps(panel: NotebookPanel): void {
  let answered = ''; // the id of the kernel that answered
  let askedAt = 0;
  let pending = false;
  const ask = () => {
    const kernel = panel.sessionContext.session?.kernel;
    if (!kernel || kernel.id === answered || pending || Date.now() - askedAt < RETRY_MS) {
      return;
    }
    pending = true;
    askedAt = Date.now();
    const future = kernel.requestExecute(
      { code: '', silent: true, store_history: false, user_expressions: { mlops: ASK } },
      true
    );
    future.done
      .then(
        reply => {
          const value = (reply?.content as any)?.user_expressions?.mlops;
          const text: string = value?.data?.['text/plain'] ?? '';
          // a Python kernel with the extension answered; any other kernel errs: neither needs asking again
          if (reply?.content.status !== 'ok' || value?.status !== 'ok' || text !== 'None') {
            answered = kernel.id;
          }
        },
        () => undefined // the kernel went away: its successor is asked on the next edit
      )
      .finally(() => {
        pending = false;
      });
  };
  const watch = (cell: ICellModel) => {
    cell.contentChanged.connect(() => {
      if (cell.type === 'code' && isLocalSweep(cell.sharedModel.getSource())) {
        ask();
      }
    });
  };
  void panel.context.ready.then(() => {
    const cells = panel.content.model?.cells;
    if (!cells) {
      return;
    }
    for (const cell of cells) {
      watch(cell);
    }
    cells.changed.connect((_, change) => {
      if (change.type === 'add') {
        change.newValues.forEach(watch);
      }
    });
  });
}
