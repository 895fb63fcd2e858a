import { LabIcon } from '@jupyterlab/ui-components';

// a lab flask; `jp-icon3` lets the theme recolour it like the built-in sidebar icons
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" d="M9 2h6v2h-1v5.3l5.6 9.4A2 2 0 0 1 17.9 22H6.1a2 2 0 0 1-1.7-3.3L10 9.3V4H9V2zm3 9.2-3.4 5.8h6.8L12 11.2z"/>
</svg>`;

export const mlopsIcon = new LabIcon({ name: 'mlops-jupyter:flask', svgstr });
