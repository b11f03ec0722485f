"""A self-contained HTML report of a comparison: one file, no network needed to view it.

Inline CSS, inline SVG charts, no JavaScript, no external fonts or images; every piece of
text from the data is HTML-escaped (the posts are user content). Sections: the aggregates,
histograms of the per-prompt score differences, the training curves of the run
(TensorBoard scalars of RUN/reward-logs and RUN/reinforcer-logs, read with TensorBoard's
own EventAccumulator), and the side-by-side table.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from rlhfkit import log

LOG_SECTIONS = (  # (directory under RUN, heading): Vertex's two TensorBoard logs
    ("reward-logs", "Reward model training (reward-logs)"),
    ("reinforcer-logs", "Reinforcement learning (reinforcer-logs)"),
)
# Vertex's tag names come first, in this order; every other tag follows alphabetically.
PREFERRED_TAGS = ("rank_loss", "accuracy", "reward", "kl_loss")
EMA_SMOOTHING = 0.6  # TensorBoard's default smoothing weight for the bold line
MAX_POINTS = 1000  # points per curve in the SVG (longer runs are thinned evenly)
CHART_W, CHART_H = 360, 200  # SVG size in pixels
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 12, 24, 28
HIST_BINS = 20
FLOAT_DIGITS = 3

Scalars = dict[str, list[tuple[int, float]]]


# -- TensorBoard logs --------------------------------------------------------------------

def read_scalars(log_dir: str | Path) -> Scalars:
    """{tag: [(step, value), ...]} of every scalar under `log_dir` (sub-directories are
    separate runs: their tags get the sub-directory as a prefix). A step logged twice (a
    resumed run) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    dirs = sorted({p.parent for p in log_dir.rglob("events.out.tfevents*")})
    out: Scalars = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})  # 0: keep every point
        try:
            acc.Reload()
        except Exception as exc:  # a corrupt file must not cost the whole report
            log.warn(f"{d}: cannot read TensorBoard events: {exc}")
            continue
        prefix = "" if d == log_dir else f"{d.relative_to(log_dir).as_posix()}/"
        for tag in acc.Tags().get("scalars", []):
            by_step = {e.step: e.value for e in acc.Scalars(tag)}
            out[prefix + tag] = sorted(by_step.items())
    return out


def order_tags(tags) -> list[str]:
    """Vertex's tags first (rank_loss, accuracy-like, reward, kl_loss), then the rest."""
    def key(tag: str):
        if tag in PREFERRED_TAGS:
            return (0, PREFERRED_TAGS.index(tag), tag)
        if "accuracy" in tag.lower():
            return (1, 0, tag)
        return (2, 0, tag)
    return sorted(tags, key=key)


def read_run_curves(run_dir: str | Path | None) -> list[tuple[str, str, Scalars | None]]:
    """[(heading, log directory, scalars or None when the logs are missing)]."""
    sections = []
    for sub, heading in LOG_SECTIONS:
        d = Path(run_dir) / sub if run_dir is not None else None
        scalars = read_scalars(d) if d is not None and d.is_dir() else None
        sections.append((heading, str(d) if d is not None else sub, scalars or None))
    return sections


# -- SVG ---------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return f"{x:.{FLOAT_DIGITS}g}"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def ema(values: list[float], weight: float = EMA_SMOOTHING) -> list[float]:
    """TensorBoard's debiased exponential moving average."""
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def _frame(title: str, x_range, y_range) -> tuple[list[str], callable]:
    (x0, x1), (y0, y1) = x_range, y_range
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    pw, ph = CHART_W - MARGIN_L - MARGIN_R, CHART_H - MARGIN_T - MARGIN_B

    def xy(x, y):
        return (MARGIN_L + (x - x0) / (x1 - x0) * pw, MARGIN_T + (1 - (y - y0) / (y1 - y0)) * ph)
    bottom, right = MARGIN_T + ph, MARGIN_L + pw
    parts = [
        f'<svg width="{CHART_W}" height="{CHART_H}" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{MARGIN_L}" y="15" class="t">{html.escape(title)}</text>',
        f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{pw}" height="{ph}" class="plot"/>',
        f'<text x="{MARGIN_L - 4}" y="{MARGIN_T + 10}" class="yl">{_fmt(y1)}</text>',
        f'<text x="{MARGIN_L - 4}" y="{bottom}" class="yl">{_fmt(y0)}</text>',
        f'<text x="{MARGIN_L}" y="{bottom + 16}" class="xl">{_fmt(x0)}</text>',
        f'<text x="{right}" y="{bottom + 16}" class="xl" text-anchor="end">{_fmt(x1)}</text>',
    ]
    if y0 < 0 < y1:
        _, yz = xy(x0, 0)
        parts.append(f'<line x1="{MARGIN_L}" x2="{right}" y1="{yz:.1f}" y2="{yz:.1f}" '
                     'class="zero"/>')
    return parts, xy


def line_chart(title: str, points: list[tuple[int, float]]) -> str:
    """A TensorBoard-style chart: the raw values faint, their EMA bold."""
    pts = [(float(s), float(v)) for s, v in points if math.isfinite(v)]
    if not pts:
        return f'<p class="muted">{html.escape(title)}: no finite values</p>'
    pts = _thin(pts)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    parts, xy = _frame(title, (min(xs), max(xs)), (min(ys), max(ys)))

    def poly(values, cls):
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(x, y) for x, y in
                                                          zip(xs, values, strict=True)))
        return f'<polyline points="{coords}" class="{cls}"/>'
    if len(pts) == 1:
        cx, cy = xy(xs[0], ys[0])
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" class="dot"/>')
    else:
        parts += [poly(ys, "raw"), poly(ema(ys), "smooth")]
    parts.append(f'<text x="{CHART_W - MARGIN_R}" y="15" class="xl" text-anchor="end">'
                 f'last {_fmt(ys[-1])}</text></svg>')
    return "\n".join(parts)


def histogram(title: str, values) -> str:
    """Bars of a distribution, with a line at 0 (tuned better to the right)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / HIST_BINS
    counts = [0] * HIST_BINS
    for v in vals:
        counts[min(int((v - lo) / width), HIST_BINS - 1)] += 1
    parts, xy = _frame(title, (lo, hi), (0, max(counts)))
    for i, c in enumerate(counts):
        (xa, ya), (xb, yb) = xy(lo + i * width, c), xy(lo + (i + 1) * width, 0)
        parts.append(f'<rect x="{xa:.1f}" y="{ya:.1f}" width="{max(xb - xa - 1, 0.5):.1f}" '
                     f'height="{yb - ya:.1f}" class="bar"/>')
    if lo < 0 < hi:
        xz, _ = xy(0, 0)
        parts.append(f'<line x1="{xz:.1f}" x2="{xz:.1f}" y1="{MARGIN_T}" '
                     f'y2="{CHART_H - MARGIN_B}" class="zero"/>')
    parts.append("</svg>")
    return "\n".join(parts)


# -- HTML --------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:20px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.muted{color:#777} .notice{color:#8a5a00}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #ddd;padding:4px 6px;
vertical-align:top;text-align:left} th{background:#f4f4f4;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap} .txt{max-height:12em;overflow:auto;
white-space:pre-wrap;min-width:16em;max-width:34em}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fff;border:1px solid #eee} svg .t{font-size:12px;font-weight:600}
svg .xl,svg .yl{font-size:10px;fill:#555} svg .yl{text-anchor:end}
svg .plot{fill:none;stroke:#ccc} svg .zero{stroke:#999;stroke-dasharray:3 3}
svg .raw{fill:none;stroke:#f4a259;stroke-width:1;opacity:.45}
svg .smooth{fill:none;stroke:#e8590c;stroke-width:2} svg .dot{fill:#e8590c}
svg .bar{fill:#4c6ef5}
.win{background:#ebfbee} .loss{background:#fff5f5}
"""

TEXT_COLUMNS = ("prompt", "base_model", "tuned_model", "target")


def _cell(col: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return '<td class="num muted">-</td>'
    if col in TEXT_COLUMNS:
        return f'<td><div class="txt">{html.escape(str(value))}</div></td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.{FLOAT_DIGITS}f}</td>'
    return f'<td class="num">{html.escape(str(value))}</td>'


def table_html(df: pd.DataFrame) -> str:
    """Every row and column; rows the tuned model wins (reward, else gold) are tinted."""
    diff = "reward_diff" if "reward_diff" in df else "gold_diff" if "gold_diff" in df else None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["#", *df.columns])
    rows = []
    for i, rec in enumerate(df.to_dict("records"), start=1):
        cls = ""
        if diff is not None and isinstance(rec[diff], float) and not math.isnan(rec[diff]):
            cls = ' class="win"' if rec[diff] > 0 else ' class="loss"' if rec[diff] < 0 else ""
        cells = "".join(_cell(c, rec[c]) for c in df.columns)
        rows.append(f'<tr{cls}><td class="num">{i}</td>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + \
        "\n</tbody></table>"


def _summary_table(summary: dict) -> str:
    rows = []
    for key, value in summary.items():
        shown = "-" if value is None else (f"{value:.{FLOAT_DIGITS}f}"
                                           if isinstance(value, float) else str(value))
        rows.append(f'<tr><th>{html.escape(key)}</th><td class="num">{html.escape(shown)}</td>'
                    "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _curves_html(sections) -> str:
    out = []
    for heading, where, scalars in sections:
        out.append(f"<h3>{html.escape(heading)}</h3>")
        if not scalars:
            out.append(f'<p class="muted">No TensorBoard scalars found in '
                       f'{html.escape(where)}.</p>')
            continue
        charts = [line_chart(tag, scalars[tag]) for tag in order_tags(scalars)]
        out.append('<div class="charts">' + "\n".join(charts) + "</div>")
    return "\n".join(out)


def render(df: pd.DataFrame, summary: dict, notices: list[str], curves, title: str,
           summary_lines: list[str] | None = None) -> str:
    """The whole report as one HTML string. `curves`: read_run_curves' output."""
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines or [])
    notes = "".join(f'<li class="notice">{html.escape(n)}</li>' for n in notices)
    hists = [histogram(f"{c} difference per prompt (tuned - base)", df[f"{c}_diff"])
             for c in ("reward", "gold") if f"{c}_diff" in df]
    hists = [h for h in hists if h]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<ul>{lines}</ul>" if lines else "",
        f"<h2>Notices</h2><ul>{notes}</ul>" if notes else "",
        "<h2>Aggregates</h2>", _summary_table(summary),
        ("<h2>Score differences</h2><div class=\"charts\">" + "\n".join(hists) + "</div>")
        if hists else "",
        "<h2>Training curves</h2>", _curves_html(curves),
        "<h2>Side by side</h2>", table_html(df),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
