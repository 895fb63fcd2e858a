import { IRunList } from './tokens';

/**
 * `next` with each run that equals the one in `prev` replaced by that earlier object: a poll keeps the
 * objects of runs that did not change, so memoized rows re-render only when their run changed.
 */
export function keepUnchanged(prev: IRunList | null, next: IRunList): IRunList {
  if (!prev) {
    return next;
  }
  const before = new Map(prev.runs.map(run => [run.run_id, run]));
  const runs = next.runs.map(run => {
    const old = before.get(run.run_id);
    return old && JSON.stringify(old) === JSON.stringify(run) ? old : run;
  });
  return { ...next, runs };
}
