"""A report of a model version's windows as one HTML page with pictures: per feature, its PSI
and PSI threshold over the windows with the drifted windows marked, and beside it the reference
histogram and a chosen window's. Plain inline SVG drawn here: no script, nothing fetched."""

from __future__ import annotations

import math
import time
from html import escape
from itertools import pairwise
from typing import Any

from monitors.report import Report, cell

__all__ = ["render_html"]

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin: 28px 0 4px; }
small, .note { color: #666; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.drift { background: #fbd5d5; font-weight: 600; }
th.drift { color: #b42318; }
.row { display: flex; gap: 24px; flex-wrap: wrap; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""
_BLUE, _RED, _GREY, _GRID = "#2f6fb3", "#c0392b", "#9aa3ad", "#eee"
_TABLE_WINDOWS = 30  # the overview table shows the newest this many
_PSI_FLOOR = 1e-3  # the trend's log scale starts here


def _el(tag: str, text: str | None = None, **attrs: object) -> str:
    """An SVG element: attribute names with _ for -, numbers to 0.1, text escaped."""
    rendered = " ".join(
        f'{k.rstrip("_").replace("_", "-")}="{escape(_num(v))}"' for k, v in attrs.items()
    )
    if text is None:
        return f"<{tag} {rendered}/>"
    return f"<{tag} {rendered}>{text}</{tag}>"


def _num(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def render_html(report: Report, chosen: dict[str, Any] | None = None) -> str:
    """The page for a report; ``chosen`` is the window whose histograms are drawn (by default
    the latest that drifted, else the latest)."""
    chosen = chosen or report.window()
    windows = report.windows
    title = escape(f"Drift: {report.model}/{report.version}")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="note">{len(windows)} windows ending {_when(windows[0]["end_time"])} to '
        f"{_when(windows[-1]['end_time'])} (event time, UTC). Cells and lines: PSI; red: the "
        f"feature drifted. Histograms: window {chosen['seq']} ({escape(chosen['status'])}, "
        f"{chosen['rows']} rows) beside the reference.</p>",
        _overview(report),
    ]
    names = report.features
    drifted = [n for n in names if any((_feature(w, n) or {}).get("drifted") for w in windows)]
    for name in drifted + [n for n in names if n not in drifted]:
        parts += [
            f"<section><h2>{escape(name)} <small>{escape(_caption(chosen, name))}</small></h2>",
            '<div class="row">',
            _trend(report, name, chosen["seq"]),
            _histograms(report, name, chosen),
            "</div></section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _caption(window: dict[str, Any], name: str) -> str:
    feature = _feature(window, name)
    if feature is None:
        return ""
    p_value = (
        f"{feature['p_value']:.2g}" if feature["p_value"] > 0 else f"1e{feature['log10_p']:.0f}"
    )
    return (
        f"window {window['seq']}: {feature['test']} p={p_value}, PSI {feature['psi']:.3f} "
        f"(threshold {feature['psi_threshold']:.3f})" + (", drifted" if feature["drifted"] else "")
    )


def _overview(report: Report) -> str:
    windows = report.windows[-_TABLE_WINDOWS:]
    head = "".join(
        f'<th class="{"drift" if w["status"] == "drift" else ""}">{w["seq"]}</th>' for w in windows
    )
    rows = [f"<tr><th>feature \\ window</th>{head}</tr>"]
    for name in report.features:
        cells = []
        for window in windows:
            feature = _feature(window, name)
            if feature is None:
                cells.append("<td>-</td>")
            else:
                css = ' class="drift"' if feature["drifted"] else ""
                cells.append(f"<td{css}>{escape(cell(feature).strip())}</td>")
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    return f"<table>{''.join(rows)}</table>"


def _trend(report: Report, name: str, chosen_seq: int) -> str:
    """PSI (log scale) and its threshold by window; drifted windows in red."""
    width, height, left, right, top, bottom = 520, 210, 48, 12, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(w["seq"], f) for w in report.windows if (f := _feature(w, name)) is not None]
    values = [max(f["psi"], f["psi_threshold"], _PSI_FLOOR) for _, f in points]
    low, high = round(math.log10(_PSI_FLOOR)), max(0, math.ceil(math.log10(max(values))))
    count = len(points)

    def x(index: int) -> float:
        return left + (plot_w * index / (count - 1) if count > 1 else plot_w / 2)

    def y(value: float) -> float:
        share = (math.log10(max(value, _PSI_FLOOR)) - low) / (high - low)
        return top + plot_h * (1 - share)

    out = [f'<svg width="{width}" height="{height}" role="img" aria-label="PSI of {escape(name)}">']
    for power in range(low, high + 1):
        level = y(10.0**power)
        out.append(_el("line", x1=left, x2=width - right, y1=level, y2=level, stroke=_GRID))
        out.append(_el("text", f"{10.0**power:g}", x=left - 6, y=level + 4, text_anchor="end"))
    for index, (seq, _) in enumerate(points):
        if seq == chosen_seq:
            out.append(
                _el(
                    "rect",
                    x=x(index) - 4,
                    y=top,
                    width=8,
                    height=plot_h,
                    fill="#f3c77a",
                    opacity=0.5,
                )
            )
    for index in range(0, count, max(1, math.ceil(count / 10))):
        label = str(points[index][0])
        out.append(_el("text", label, x=x(index), y=top + plot_h + 16, text_anchor="middle"))
    out.append(_el("text", "window", x=left + plot_w / 2, y=height - 4, text_anchor="middle"))
    for key, colour, dashes in (("psi_threshold", _GREY, "5 4"), ("psi", _BLUE, "none")):
        line = " ".join(f"{x(i):.1f},{y(f[key]):.1f}" for i, (_, f) in enumerate(points))
        out.append(
            _el(
                "polyline",
                points=line,
                fill="none",
                stroke=colour,
                stroke_width=1.5,
                stroke_dasharray=dashes,
            )
        )
    for index, (seq, feature) in enumerate(points):
        tip = f"window {seq}: PSI {feature['psi']:.3f}, threshold {feature['psi_threshold']:.3f}"
        out.append(
            _el(
                "circle",
                f"<title>{escape(tip)}</title>",
                cx=x(index),
                cy=y(feature["psi"]),
                r=4 if feature["drifted"] else 2.5,
                fill=_RED if feature["drifted"] else _BLUE,
            )
        )
    out.append(_el("text", "PSI (log scale); dashed: threshold", x=left + 4, y=top - 4))
    out.append("</svg>")
    return "".join(out)


def _histograms(report: Report, name: str, chosen: dict[str, Any]) -> str:
    """The reference's shares per bin (grey) beside the chosen window's (blue, red if drifted)."""
    reference = report.reference.get("features", {}).get(name)
    feature = _feature(chosen, name)
    if reference is None or feature is None or "histogram" not in feature:
        return '<p class="note">no histogram</p>'
    labels = _bin_labels(reference)
    ref_counts, counts = reference["counts"], feature["histogram"]
    ref_total, total = max(sum(ref_counts), 1), max(sum(counts), 1)
    shares = [(r / ref_total, c / total) for r, c in zip(ref_counts, counts, strict=False)]
    width, height, left, right, top, bottom = 440, 210, 44, 8, 16, 62
    plot_w, plot_h = width - left - right, height - top - bottom
    high = max(max(max(pair) for pair in shares), 1e-9)
    group = plot_w / max(len(shares), 1)
    colour = _RED if feature["drifted"] else _BLUE
    out = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="bins of {escape(name)}">'
    ]
    for tick in (0.0, 0.5, 1.0):
        level = top + plot_h * (1 - tick)
        out.append(_el("line", x1=left, x2=width - right, y1=level, y2=level, stroke=_GRID))
        out.append(_el("text", f"{tick * high:.0%}", x=left - 6, y=level + 4, text_anchor="end"))
    for index, (ref_share, share) in enumerate(shares):
        x0 = left + index * group
        for offset, value, fill in ((0.1, ref_share, _GREY), (0.5, share, colour)):
            bar = plot_h * value / high
            tip = f"<title>{escape(labels[index])}: {value:.1%}</title>"
            out.append(
                _el(
                    "rect",
                    tip,
                    x=x0 + group * offset,
                    y=top + plot_h - bar,
                    width=group * 0.38,
                    height=bar,
                    fill=fill,
                )
            )
        cx, cy = x0 + group / 2, top + plot_h + 10
        out.append(
            _el(
                "text",
                escape(labels[index]),
                x=cx,
                y=cy,
                text_anchor="end",
                transform=f"rotate(-35 {cx:.1f} {cy:.1f})",
            )
        )
    for offset, fill, label in ((0, _GREY, "reference"), (90, colour, f"window {chosen['seq']}")):
        out.append(_el("rect", x=left + offset, y=top - 12, width=10, height=10, fill=fill))
        out.append(_el("text", label, x=left + offset + 14, y=top - 3))
    out.append("</svg>")
    return "".join(out)


def _bin_labels(reference: dict[str, Any]) -> list[str]:
    if reference["kind"] == "categorical":
        return [c if len(c) <= 14 else c[:13] + "…" for c in reference["categories"]]
    inner = reference["bin_edges"][1:-1]
    if not inner:
        return ["all"]
    middle = [f"{a:.3g} to {b:.3g}" for a, b in pairwise(inner)]
    return [f"< {inner[0]:.3g}", *middle, f"≥ {inner[-1]:.3g}"]


def _feature(window: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((f for f in window["features"] if f["name"] == name), None)


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
