"""A drift check as text (terminal), HTML (notebook, and `--report PATH`: one self-contained file with SVG plots)."""

from __future__ import annotations

import html

W, H = 320, 120  # one plot's size in pixels


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def rows(check) -> tuple[list, list]:
    """The per-column table: header and rows, drifted columns first."""
    header = ["column", "test", "statistic", "threshold", "drift", "missing", "unseen"]
    out = []
    for c in sorted(check.columns, key=lambda c: (not c["drift"], -c["score"])):
        unseen = c.get("unseen_count")
        out.append([c["column"] + (" (prediction)" if c["kind"] == "prediction" else ""), c["test"],
                    _fmt(c["statistic"]), _fmt(c["threshold"]), "DRIFT" if c["drift"] else "ok",
                    f"{c['missing_share']:.1%}" if c["missing_share"] or c["reference_missing_share"] else "",
                    f"{unseen}: {', '.join(c['unseen'][:3])}" if unseen else ""])
    return header, out


def service_line(check) -> str:
    s = check.service
    parts = [f"{s.get('requests', 0)} requests"]
    if s.get("requests"):
        parts.append(f"errors {s['error_share']:.1%}, refused {s['refused_share']:.1%}")
    lat = s.get("latency_ms") or {}
    if lat:
        parts.append(f"latency p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
    acc = check.accuracy
    if acc and acc.get("labels"):
        parts.append(f"accuracy {acc['accuracy']:.3f} on {acc['labels']} labels" if "accuracy" in acc
                     else f"MAE {acc['mae']:.4g} on {acc['labels']} labels")
    return "; ".join(parts)


def text(check) -> str:
    from .._render import text_table

    lines = [check.summary()]
    for skipped in check.skipped:
        lines.append(f"skipped {skipped['file']}: {skipped['why']} (a server killed mid-write leaves such a file)")
    if check.rows:
        header, body = rows(check)
        lines += [text_table(header, body), service_line(check)]
    return "\n".join(lines)


def _bars(bins: dict) -> str:
    """Reference (grey) and current (orange) shares side by side."""
    ref, cur = bins["reference"], bins["current"]
    n = len(ref)
    top = max(ref + cur + [1e-9])
    step = (W - 20) / max(n, 1)
    out = []
    for i, (r, c) in enumerate(zip(ref, cur)):
        x = 10 + i * step
        for dx, value, color in ((0, r, "#9aa0a6"), (step / 2, c, "#e8710a")):
            h = (H - 30) * value / top
            out.append(f'<rect x="{x + dx:.1f}" y="{H - 20 - h:.1f}" width="{max(step / 2 - 1, 1):.1f}" '
                       f'height="{h:.1f}" fill="{color}"/>')
    labels = bins.get("labels")
    if labels:
        for i, label in enumerate(labels):
            out.append(f'<text x="{10 + i * step + step / 2:.1f}" y="{H - 6}" font-size="9" text-anchor="middle">'
                       f'{html.escape(label[:8])}</text>')
    else:
        edges = bins["edges"]
        out.append(f'<text x="10" y="{H - 6}" font-size="9">{_fmt(edges[0])}</text>'
                   f'<text x="{W - 10}" y="{H - 6}" font-size="9" text-anchor="end">{_fmt(edges[-1])}</text>')
    return _svg("".join(out))


def _series(check, column: str) -> str:
    """A column's drift score per window (1 = its threshold, dashed)."""
    points = [(i, w["scores"].get(column, 0.0)) for i, w in enumerate(check.windows)]
    if not points:
        return ""
    top = max([p[1] for p in points] + [1.5])
    n = max(len(points) - 1, 1)
    xy = " ".join(f"{10 + (W - 20) * i / n:.1f},{H - 20 - (H - 30) * v / top:.1f}" for i, v in points)
    one = H - 20 - (H - 30) / top
    return _svg(f'<line x1="10" x2="{W - 10}" y1="{one:.1f}" y2="{one:.1f}" stroke="#d93025" stroke-dasharray="4"/>'
                f'<polyline points="{xy}" fill="none" stroke="#1a73e8" stroke-width="2"/>'
                f'<text x="10" y="{H - 6}" font-size="9">{html.escape(check.windows[0]["start"][:16])}</text>'
                f'<text x="{W - 10}" y="{H - 6}" font-size="9" text-anchor="end">'
                f'{html.escape(check.windows[-1]["end"][:16])}</text>')


def _svg(body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">'
            f'<rect width="{W}" height="{H}" fill="white" stroke="#ddd"/>{body}</svg>')


def html_part(check) -> str:
    """The report as an HTML fragment: verdict, table, then for each drifted column (or, without drift, the
    prediction) its distribution against the reference and its score per window."""
    from .._render import html_table

    header, body = rows(check)
    parts = [f"<h3>{html.escape(check.summary())}</h3>",
             f"<p>{html.escape(service_line(check))} &middot; log: <code>{html.escape(check.log)}</code></p>"]
    parts += [f"<p>skipped <code>{html.escape(s['file'])}</code>: {html.escape(s['why'])}</p>" for s in check.skipped]
    if check.rows:
        parts.append(html_table(header, body))
    shown = [c for c in check.columns if c["drift"]] or [c for c in check.columns if c["kind"] == "prediction"]
    for c in shown[:20]:
        if c.get("bins"):
            parts.append(f"<h4>{html.escape(c['column'])}: {c['test']} {_fmt(c['statistic'])} "
                         f"(threshold {_fmt(c['threshold'])})</h4><div>{_bars(c['bins'])} "
                         f"{_series(check, c['column'])}</div>")
    return "\n".join(parts)


def page(check) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'><title>drift report</title><style>"
            "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{padding:2px 8px;"
            "border-bottom:1px solid #eee;text-align:left}</style></head><body>"
            "<p>reference: grey &middot; current: orange &middot; dashed line: the threshold</p>"
            f"{html_part(check)}</body></html>")
