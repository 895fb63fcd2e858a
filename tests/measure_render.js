// A forced refresh of the MLOps runs panel, timed in the page from outside the extension: click the
// refresh button, then wait (MutationObserver) for it to leave its busy state, which the panel does
// in the same redraw that puts the rows in the DOM; the fetch is read from the browser's resource
// timing. Milliseconds. Shared by ui-tests/tests/lab.ts and tests/lab_browser.py (bench/bench_sidebar.py).
async () => {
  const panel = document.querySelector('[data-testid=mlops-sidebar]');
  const button = panel.querySelector('[data-testid=mlops-refresh]');
  // the lab polls all the time: a full resource-timing buffer would drop the entry we want
  performance.clearResourceTimings();
  let timer = 0;
  const drawn = new Promise((resolve, reject) => {
    const watch = new MutationObserver(() => {
      if (button.getAttribute('aria-busy') === 'false') {
        watch.disconnect();
        resolve(performance.now());
      }
    });
    watch.observe(button, { attributes: true, attributeFilter: ['aria-busy'] });
    timer = setTimeout(() => {
      watch.disconnect();
      reject(new Error('the runs panel did not redraw within 30 s'));
    }, 30000);
  });
  const started = performance.now();
  button.click();
  const done = await drawn;
  clearTimeout(timer);
  // the forced GET is the last one that began after the click (a poll may have been on its way)
  const fetches = performance
    .getEntriesByType('resource')
    .filter(e => e.name.includes('/mlops/runs?') && e.startTime >= started && e.responseEnd <= done);
  const fetched = fetches[fetches.length - 1];
  return {
    render_ms: done - started,
    fetch_ms: fetched ? fetched.responseEnd - fetched.startTime : NaN,
    rows: panel.querySelectorAll('.mlops-run-row').length
  };
}
