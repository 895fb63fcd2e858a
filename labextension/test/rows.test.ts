/** A poll keeps the objects of runs that did not change, so only changed rows re-render. */
import { keepUnchanged } from '../src/rows';
import { IRun, IRunList } from '../src/tokens';

function run(id: string, acc: number, status: IRun['status'] = 'FINISHED'): IRun {
  return {
    run_id: id,
    run_name: `train ${id}`,
    status,
    start_time: 1,
    end_time: status === 'RUNNING' ? null : 2,
    experiment_id: '1',
    notebook: '/p/train.ipynb',
    cell_id: 'c1',
    cell_key: 'c1',
    execution_count: 3,
    params: { lr: '0.1' },
    metrics: { acc }
  };
}

function list(...runs: IRun[]): IRunList {
  return { notebook: '/p/train.ipynb', tracking_uri: 'sqlite:///x', ui: 'mlflow ui', runs };
}

describe('keepUnchanged', () => {
  it('takes the new list as it is when there was none', () => {
    const next = list(run('a', 0.5));
    expect(keepUnchanged(null, next)).toBe(next);
  });

  it('keeps the earlier object of a run that did not change, and takes the new one of a run that did', () => {
    const prev = list(run('a', 0.5, 'RUNNING'), run('b', 0.7));
    const next = list(run('a', 0.6), run('b', 0.7), run('c', 0.1));
    const kept = keepUnchanged(prev, next);
    expect(kept.runs.map(r => r.run_id)).toEqual(['a', 'b', 'c']);
    expect(kept.runs[0]).toBe(next.runs[0]); // changed: its row re-renders
    expect(kept.runs[1]).toBe(prev.runs[1]); // unchanged: the same object, its memoized row stays
    expect(kept.runs[2]).toBe(next.runs[2]); // new
    expect(kept.notebook).toBe(next.notebook);
  });

  it('drops runs that are gone', () => {
    const kept = keepUnchanged(list(run('a', 0.5), run('b', 0.7)), list(run('b', 0.7)));
    expect(kept.runs.map(r => r.run_id)).toEqual(['b']);
  });

  it('sees a change in a tag-derived field such as the replay verdict', () => {
    const before = run('a', 0.5);
    const after = { ...run('a', 0.5), replayed: 'match · replayed by run x' };
    expect(keepUnchanged(list(before), list(after)).runs[0]).toBe(after);
  });
});
