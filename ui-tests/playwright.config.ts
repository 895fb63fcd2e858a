/**
 * The MLOps sidebar in a real JupyterLab, driven by galata in headless Chromium.
 *
 * One lab server for the run (webServer); before it starts, seed.py fills a fresh project in
 * $MLOPS_UI_STATE (a temporary folder, removed when the server exits). Screenshots, the lab's log
 * and the report stay in test-results/ and playwright-report/.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defineConfig } from '@playwright/test';

const REPO = path.resolve(__dirname, '..');
const PYTHON =
  process.env.MLOPS_PYTHON ?? path.join(REPO, '.venv', 'bin', 'python');
// made once by the runner; the workers inherit it, so the specs see the same folder
process.env.MLOPS_UI_STATE ??= fs.mkdtempSync(
  path.join(os.tmpdir(), 'mlops-ui-')
);
process.env.MLOPS_PYTHON = PYTHON;
const STATE = process.env.MLOPS_UI_STATE;
const PORT = process.env.MLOPS_UI_PORT ?? '8888';
const CHROMIUM = '/usr/bin/chromium';

if (!fs.existsSync(CHROMIUM)) {
  throw new Error(
    `${CHROMIUM} is missing: \`make test\` installs it (apt-get install -y chromium).`
  );
}

export default defineConfig({
  testDir: './tests',
  outputDir: './test-results',
  timeout: 300_000,
  expect: { timeout: 5_000 },
  workers: 1,
  fullyParallel: false,
  // a stray test.only fails the run on CI; no retries: a flaky test must show as a failure
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: [['list'], ['html', { open: 'never' }]],
  use: {
    baseURL: `http://127.0.0.1:${PORT}`,
    viewport: { width: 1400, height: 850 },
    // Playwright's own browser download fails here; Debian's chromium needs these flags as root
    launchOptions: {
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--headless',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic'
      ]
    },
    screenshot: 'on',
    video: 'off', // video needs an ffmpeg download
    trace: 'retain-on-failure'
  },
  webServer: {
    command:
      `mkdir -p test-results && "${PYTHON}" seed.py project "${STATE}/project" && ` +
      `exec "${PYTHON}" -m jupyterlab --config jupyter_server_test_config.py > test-results/lab.log 2>&1`,
    url: `http://127.0.0.1:${PORT}/lab`,
    timeout: 180_000,
    // a server left from elsewhere would serve another project
    reuseExistingServer: false,
    // SIGTERM lets jupyter shut its kernels down (they run in sessions of their own)
    gracefulShutdown: { signal: 'SIGTERM', timeout: 30_000 },
    env: {
      MLOPS_UI_STATE: STATE,
      MLOPS_UI_PORT: PORT,
      // keep the developer's Jupyter and IPython config out of the test
      JUPYTER_CONFIG_DIR: path.join(STATE, 'config'),
      JUPYTER_RUNTIME_DIR: path.join(STATE, 'runtime'),
      IPYTHONDIR: path.join(STATE, 'ipython')
    }
  }
});
