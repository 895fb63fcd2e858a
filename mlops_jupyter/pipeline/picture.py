"""The pipeline as a picture: ``pipeline.svg``, the step DAG drawn by us (no graphviz binary to install).

Steps are boxes in layers (a step sits one layer below its deepest upstream), coloured by state: fresh,
stale, failed, never run. An edge carries the variables one step hands to the next; a step's tagged
resources (GPU, CPU, memory) sit under its name. Stdlib only.
"""

from __future__ import annotations

import html
from pathlib import Path

FILE = "pipeline.svg"
STATES = {  # state -> (fill, stroke, legend)
    "fresh": ("#dcfce7", "#16a34a", "fresh"),
    "stale": ("#fef3c7", "#d97706", "stale"),
    "failed": ("#fee2e2", "#dc2626", "failed"),
    "never run": ("#f3f4f6", "#6b7280", "never run"),
    "running": ("#dbeafe", "#2563eb", "running"),
}
CHAR_W, BOX_H, GAP_X, GAP_Y, PAD = 7.2, 46, 28, 64, 16


def states(rows) -> dict:
    """step -> state from ``pipeline.status`` rows (step, fresh|stale|failed, reason)."""
    return {name: "never run" if verdict == "stale" and reason == "never run" else verdict
            for name, verdict, reason in rows}


_SIZES = (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3))


def _resources(res: dict) -> str:
    """``gpu 1 · cpu 4 · mem 8G`` from a step's normalised resources (resources.parse: memory in bytes)."""
    parts = [f"{key} {res[key]:g}" for key in ("gpu", "cpu") if key in res]
    if "memory" in res:
        unit, factor = next(((u, f) for u, f in _SIZES if res["memory"] >= f), ("", 1))
        parts.append(f"mem {res['memory'] / factor:g}{unit}")
    return " · ".join(parts)


def _layers(steps: list) -> list[list[dict]]:
    depth: dict = {}
    for s in steps:  # pipeline.json lists steps in a topological order
        depth[s["name"]] = 1 + max((depth[d] for d in s["deps"] if d in depth), default=-1)
    rows: list[list[dict]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for s in steps:
        rows[depth[s["name"]]].append(s)
    return rows


def svg(pipe, state_of: dict | None = None) -> str:
    """The SVG text of ``pipe``'s DAG; ``state_of`` maps step -> state (missing: never run)."""
    state_of = state_of or {}
    layers = _layers(pipe.steps)
    boxes: dict = {}
    widths = []
    for layer in layers:
        ws = [max(90, CHAR_W * max(len(s["name"]), len(_resources(s.get("resources") or {}))) + 24) for s in layer]
        widths.append(sum(ws) + GAP_X * (len(ws) - 1))
        boxes.update({s["name"]: w for s, w in zip(layer, ws)})
    legend_w = sum(16 + CHAR_W * len(legend) + 14 for state, (_, _, legend) in STATES.items() if state != "running")
    level = {s["name"]: i for i, layer in enumerate(layers) for s in layer}
    skips = any(level[src] < level[s["name"]] - 1 for s in pipe.steps
                for src in [*s["deps"], *(s.get("inputs") or {}).values()] if src in level)
    width = max(*widths, legend_w, 200) + 2 * PAD + (60 if skips else 0)  # room for edges rounding a layer
    legend_y = PAD + len(layers) * (BOX_H + GAP_Y) - GAP_Y + 30
    height = legend_y + 24
    place = {}
    for i, (layer, row_w) in enumerate(zip(layers, widths)):
        x = PAD + (width - 2 * PAD - (60 if skips else 0) - row_w) / 2
        for s in layer:
            place[s["name"]] = (x, PAD + i * (BOX_H + GAP_Y), boxes[s["name"]])
            x += boxes[s["name"]] + GAP_X
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12" class="mlops-pipeline">',
           f"<title>pipeline {html.escape(pipe.name)}</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>']
    for s in pipe.steps:
        x2, y2, w2 = place[s["name"]]
        handed: dict = {}
        for var, src in (s.get("inputs") or {}).items():
            handed.setdefault(src, []).append(var)
        for dep in [*s["deps"], *(src for src in handed if src not in s["deps"])]:  # a hand-off skipping a layer too
            x1, y1, w1 = place[dep]
            ax, ay, bx, by = x1 + w1 / 2, y1 + BOX_H, x2 + w2 / 2, y2
            between = [px + pw for px, py, pw in place.values() if ay < py < by]
            h = GAP_Y / 2
            if between:  # it skips a layer: down the right of the boxes in between
                side = max(between) + GAP_X / 2
                d = (f"M {ax:.1f} {ay:.1f} C {ax:.1f} {ay + h:.1f}, {side:.1f} {ay + h / 2:.1f}, {side:.1f} {ay + h:.1f} "
                     f"L {side:.1f} {by - h:.1f} C {side:.1f} {by - h / 2:.1f}, {bx:.1f} {by - h:.1f}, {bx:.1f} {by:.1f}")
                lx, ly = side + 4, (ay + by) / 2
            else:
                d = f"M {ax:.1f} {ay:.1f} C {ax:.1f} {ay + h:.1f}, {bx:.1f} {by - h:.1f}, {bx:.1f} {by:.1f}"
                lx, ly = (ax + bx) / 2 + 4, (ay + by) / 2 + 4
            names = handed.get(dep, [])
            dash = "" if names else ' stroke-dasharray="4 3"'
            out.append(f'<g class="edge" data-from="{html.escape(dep)}" data-to="{html.escape(s["name"])}">'
                       f'<path d="{d}" fill="none" stroke="#6b7280"{dash} marker-end="url(#arrow)"/>')
            if names:
                out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" fill="#374151" font-size="11" font-style="italic">'
                           f'{html.escape(", ".join(sorted(names)))}</text>')
            out.append("</g>")
    for s in pipe.steps:
        x, y, w = place[s["name"]]
        state = state_of.get(s["name"], "never run")
        fill, stroke, _ = STATES.get(state, STATES["never run"])
        res = _resources(s.get("resources") or {})
        out.append(f'<g class="step" data-step="{html.escape(s["name"])}" data-state="{html.escape(state)}">'
                   f"<title>{html.escape(s['name'])}: {html.escape(state)}</title>"
                   f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{BOX_H}" rx="6" fill="{fill}" '
                   f'stroke="{stroke}" stroke-width="1.5"/>'
                   f'<text x="{x + w / 2:.1f}" y="{y + (19 if res else 27):.1f}" text-anchor="middle" '
                   f'font-weight="600" fill="#111827">{html.escape(s["name"])}</text>')
        if res:
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + 36:.1f}" text-anchor="middle" font-size="11" '
                       f'fill="#374151">{html.escape(res)}</text>')
        out.append("</g>")
    x = PAD
    for state, (fill, stroke, legend) in STATES.items():
        if state == "running":
            continue  # only the live view (the sidebar) shows it
        out.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" rx="2" fill="{fill}" stroke="{stroke}"/>'
                   f'<text x="{x + 16}" y="{legend_y}" fill="#374151" font-size="11">{legend}</text>')
        x += 16 + CHAR_W * len(legend) + 14
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(folder, state_of: dict | None = None, pipe=None) -> Path:
    """Draw the pipeline exported into ``folder`` (``pipe``, when loaded already) into ``folder/pipeline.svg``,
    its steps coloured by ``state_of`` (default: their states now, as ``mlops pipeline status`` reads them)."""
    from . import load, status
    from .state import _replace

    pipe = pipe or load(folder)
    path = pipe.folder / FILE
    _replace(path, svg(pipe, state_of if state_of is not None else states(status(folder))))
    return path


LIVE = {"executing": "running", "ran": "fresh", "skipped": "fresh", "failed": "failed"}


def before_run(names: list, known: dict, likely: set) -> dict:
    """step -> state as a run starts, from the state file's steps alone (no hashing): what is likely to run is
    stale (or never run), the rest fresh."""
    out = {}
    for name in names:
        last = known.get(name, {})
        if last.get("failed"):
            out[name] = "failed"
        elif not last.get("success"):
            out[name] = "never run"
        else:
            out[name] = "stale" if name in likely else "fresh"
    return out


def after_run(results: dict, known: dict) -> dict:
    """step -> state once a run ends: ``results`` step -> ran|skipped|failed|blocked, ``known`` the state
    file's steps (a blocked step is stale when it succeeded once, else never run)."""
    out = {}
    for name, status in results.items():
        if status in ("ran", "skipped"):
            out[name] = "fresh"
        elif status == "failed":
            out[name] = "failed"
        else:
            out[name] = "stale" if known.get(name, {}).get("success") else "never run"
    return out
