"""A self-contained HTML report of a comparison: one file, no network needed to view it.

Inline CSS, inline SVG charts, no JavaScript, no external fonts or images; every piece of
text from the data is HTML-escaped (the posts are user content). Made to be read at
1280-1600 px, top to bottom:

1. the verdict and the headline numbers (win rates with their 95% intervals, the final KL
   to the base, the change in length), the instruction once;
2. with several runs, one row per run (rlhfkit.compare_runs);
3. histograms of the per-prompt score differences, with axis labels;
4. the training curves (TensorBoard scalars of RUN/reward-logs and RUN/reinforcer-logs,
   read with TensorBoard's own EventAccumulator); a tag logged once (TensorBoard's
   hparam/* values) is a value in a table, not a one-dot chart;
5. the side-by-side table: fixed layout that fits the page, long texts folded in
   <details>, a legend for the row colours;
6. every aggregate, by name, for readers of `--json`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from rlhfkit import log
from rlhfkit.compare_metrics import CI_LEVEL

LOG_SECTIONS = (  # (directory under RUN, heading): Vertex's two TensorBoard logs
    ("reward-logs", "Reward model training (reward-logs)"),
    ("reinforcer-logs", "Reinforcement learning (reinforcer-logs)"),
)
# Vertex's tag names come first, in this order; every other tag follows alphabetically.
PREFERRED_TAGS = ("rank_loss", "accuracy", "reward", "kl_loss")
EMA_SMOOTHING = 0.6  # TensorBoard's default smoothing weight for the bold line
MAX_POINTS = 1000  # points per curve in the SVG (longer runs are thinned evenly)
CHART_W, CHART_H = 360, 220  # SVG size in pixels
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 12, 24, 40
TEXT_PREVIEW_CHARS = 180  # a longer text shows its start; the rest opens with a click
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


def _frame(title: str, x_range, y_range, x_label: str, y_label: str
           ) -> tuple[list[str], callable]:
    (x0, x1), (y0, y1) = x_range, y_range
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    pw, ph = CHART_W - MARGIN_L - MARGIN_R, CHART_H - MARGIN_T - MARGIN_B

    def xy(x, y):
        return (MARGIN_L + (x - x0) / (x1 - x0) * pw, MARGIN_T + (1 - (y - y0) / (y1 - y0)) * ph)
    bottom, right = MARGIN_T + ph, MARGIN_L + pw
    mid_y = MARGIN_T + ph / 2
    parts = [
        f'<svg width="{CHART_W}" height="{CHART_H}" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{MARGIN_L}" y="15" class="t">{html.escape(title)}</text>',
        f'<rect x="{MARGIN_L}" y="{MARGIN_T}" width="{pw}" height="{ph}" class="plot"/>',
        f'<text x="{MARGIN_L - 4}" y="{MARGIN_T + 10}" class="yl">{_fmt(y1)}</text>',
        f'<text x="{MARGIN_L - 4}" y="{bottom}" class="yl">{_fmt(y0)}</text>',
        f'<text x="{MARGIN_L}" y="{bottom + 14}" class="xl">{_fmt(x0)}</text>',
        f'<text x="{right}" y="{bottom + 14}" class="xl" text-anchor="end">{_fmt(x1)}</text>',
        f'<text x="{MARGIN_L + pw / 2:.0f}" y="{CHART_H - 6}" class="axis" '
        f'text-anchor="middle">{html.escape(x_label)}</text>',
        f'<text x="12" y="{mid_y:.0f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 12 {mid_y:.0f})">{html.escape(y_label)}</text>',
    ]
    if y0 < 0 < y1:
        _, yz = xy(x0, 0)
        parts.append(f'<line x1="{MARGIN_L}" x2="{right}" y1="{yz:.1f}" y2="{yz:.1f}" '
                     'class="zero"/>')
    return parts, xy


def line_chart(title: str, points: list[tuple[int, float]]) -> str:
    """A TensorBoard-style chart: the raw values faint, their EMA bold; x is the step."""
    pts = [(float(s), float(v)) for s, v in points if math.isfinite(v)]
    if not pts:
        return f'<p class="muted">{html.escape(title)}: no finite values</p>'
    pts = _thin(pts)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    parts, xy = _frame(title, (min(xs), max(xs)), (min(ys), max(ys)), "step",
                       title.rsplit("/", 1)[-1])

    def poly(values, cls):
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in (xy(x, y) for x, y in
                                                          zip(xs, values, strict=True)))
        return f'<polyline points="{coords}" class="{cls}"/>'
    parts += [poly(ys, "raw"), poly(ema(ys), "smooth")]
    parts.append(f'<text x="{CHART_W - MARGIN_R}" y="15" class="xl" text-anchor="end">'
                 f'last {_fmt(ys[-1])}</text></svg>')
    return "\n".join(parts)


def histogram(title: str, values, x_label: str = "tuned - base") -> str:
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
    parts, xy = _frame(title, (lo, hi), (0, max(counts)), x_label + " (right: tuned better)",
                       "prompts")
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
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;
padding:20px 24px;max-width:1600px;color:#1f2328}
h1{font-size:21px;margin:0 0 12px} h2{font-size:17px;margin-top:28px;
border-bottom:1px solid #d0d7de;padding-bottom:4px} h3{font-size:15px}
.muted{color:#6e7781} .notice{color:#8a5a00}
.verdict{font-size:17px;font-weight:600;margin:6px 0 12px}
.good{color:#1a7f37} .bad{color:#cf222e} .even{color:#6e7781}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:12px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 14px;background:#f6f8fa}
.card .k{color:#57606a;font-size:13px} .card .v{font-size:22px;font-weight:600}
.card .d{color:#57606a;font-size:12.5px}
.instruction{background:#f6f8fa;border-left:4px solid #8c959f;padding:8px 12px;margin:14px 0}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #d0d7de;padding:4px 6px;
vertical-align:top;text-align:left} th{background:#f6f8fa}
td.num{text-align:right;white-space:nowrap}
table.sbs{table-layout:fixed;width:100%} table.sbs th{position:sticky;top:0;z-index:1}
table.sbs td{overflow-wrap:anywhere;white-space:pre-wrap}
table.sbs td.num{white-space:normal;overflow-wrap:normal}
table.runs td,table.runs th{white-space:nowrap}
.wrap{overflow-x:auto}
details summary{cursor:pointer} details summary::marker{color:#0969da}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fff;border:1px solid #eaeef2} svg .t{font-size:12px;font-weight:600}
svg .xl,svg .yl{font-size:10px;fill:#57606a} svg .yl{text-anchor:end}
svg .axis{font-size:11px;fill:#24292f}
svg .plot{fill:none;stroke:#d0d7de} svg .zero{stroke:#8c959f;stroke-dasharray:3 3}
svg .raw{fill:none;stroke:#f4a259;stroke-width:1;opacity:.45}
svg .smooth{fill:none;stroke:#e8590c;stroke-width:2}
svg .bar{fill:#4c6ef5}
.legend{display:flex;gap:18px;align-items:center;margin:6px 0;color:#57606a}
.swatch{display:inline-block;width:14px;height:14px;border:1px solid #d0d7de;
vertical-align:middle;margin-right:4px}
.win{background:#dafbe1} .loss{background:#ffebe9}
"""

LABELS = {  # the aggregates' keys in words (the --json names stay as they are)
    "n": "prompts compared", "n_gold": "prompts with gold scores",
    "reward_tie_threshold": "reward-model tie threshold (|score difference| <=)",
    "win_rate": "reward-model win rate", "win_rate_strict": "reward-model win rate, no ties",
    "gold_win_rate": "gold win rate", "human_win_rate": "human win rate",
    "mean_reward_base": "mean reward, base", "mean_reward_tuned": "mean reward, tuned",
    "mean_gold_base": "mean gold score, base", "mean_gold_tuned": "mean gold score, tuned",
    "mean_words_base": "mean words, base", "mean_words_tuned": "mean words, tuned",
    "n_word_limit": "prompts with a word limit",
    "within_limit_rate_base": "within the word limit, base",
    "within_limit_rate_tuned": "within the word limit, tuned",
    "mean_rouge_l_base": "ROUGE-L F1, base", "mean_rouge_l_tuned": "ROUGE-L F1, tuned",
    "human_n": "human judgements", "human_prompts": "prompts judged by people",
    "human_unmatched": "human judgements matching no prompt",
    "human_reward_agreement": "human agrees with the reward model",
    "human_reward_agreement_n": "pairs for that agreement",
    "human_gold_agreement": "human agrees with the gold annotator",
    "human_gold_agreement_n": "pairs for that agreement",
}


def _label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    for end, words in (("_ci_low", "95% CI low"), ("_ci_high", "95% CI high")):
        if key.endswith(end):
            return f"{_label(key.removesuffix(end))}, {words}"
    for part in ("wins", "ties", "losses"):
        for who, name in (("reward_", "reward model"), ("gold_", "gold"), ("human_", "human")):
            if key in (f"{who}{part}", f"{who}{part}_strict"):
                return f"{name} {part}" + (", no ties" if key.endswith("_strict") else "")
    return key.replace("_", " ")


def _verdict(low, high) -> tuple[str, str]:
    """(words, css class): better / worse only when the 95% interval excludes 0.5."""
    if low is None or high is None:
        return "", "even"
    if low > 0.5:
        return "tuned is better", "good"
    if high < 0.5:
        return "tuned is worse", "bad"
    return "no clear difference", "even"


def _card(key: str, value: str, detail: str = "", cls: str = "") -> str:
    return (f'<div class="card"><div class="k">{html.escape(key)}</div>'
            f'<div class="v {cls}">{html.escape(value)}</div>'
            f'<div class="d">{html.escape(detail)}</div></div>')


def _rate_card(s: dict, prefix: str, name: str, extra: str = "") -> str:
    rate = s.get(f"{prefix}win_rate")
    if rate is None:
        return ""
    low, high = s[f"{prefix}win_rate_ci_low"], s[f"{prefix}win_rate_ci_high"]
    words, cls = _verdict(low, high)
    who = prefix or "reward_"
    counts = f"{s[f'{who}wins']} wins / {s[f'{who}ties']} ties / {s[f'{who}losses']} losses"
    return _card(name, f"{rate:.3f}", f"{CI_LEVEL:.0%} CI {low:.3f}-{high:.3f}: {words}; "
                 f"{counts}{extra}", cls)


def summary_html(s: dict, info=None) -> str:
    """The verdict line and the headline cards."""
    best = next((p for p in ("human_", "gold_", "") if s.get(f"{p}win_rate") is not None), None)
    judge = {"human_": "people, blind", "gold_": "the demo world's gold annotator",
             "": "the reward model"}
    verdict = ""
    if best is not None:
        words, cls = _verdict(s[f"{best}win_rate_ci_low"], s[f"{best}win_rate_ci_high"])
        verdict = (f'<p class="verdict {cls}" id="verdict">Verdict: {html.escape(words)} '
                   f'<span class="muted">(judged by {judge[best]}, on {s["n"]} prompts)'
                   "</span></p>")
    cards = [_rate_card(s, "human_", "human win rate of tuned over base"),
             _rate_card(s, "gold_", "gold win rate (demo annotator)"),
             _rate_card(s, "", "reward-model win rate",
                        f"; a tie when |score difference| <= {s.get('reward_tie_threshold')}"
                        f"; without ties {s.get('win_rate_strict') or 0:.3f}")]
    if info is not None and info.final_kl is not None:
        cards.append(_card("KL to the base (final step)", f"{info.final_kl:.3f} nats",
                           f"{info.method or 'RL'}, {info.steps} steps"))
    base, tuned = s.get("mean_words_base"), s.get("mean_words_tuned")
    if base and tuned is not None:
        limit = ""
        if s.get("within_limit_rate_base") is not None:
            limit = (f"; within the word limit {s['within_limit_rate_base']:.0%} -> "
                     f"{s['within_limit_rate_tuned']:.0%}")
        cards.append(_card("length change", f"{(tuned - base) / base:+.1%}",
                           f"mean words {base:.1f} -> {tuned:.1f}{limit}"))
    return verdict + '<div class="cards">' + "".join(c for c in cards if c) + "</div>"


def shared_instruction(prompts) -> str | None:
    """The instruction, when every prompt has the same one (shown once, not per row)."""
    from rlhfkit.data import INSTRUCTION_SEPARATOR

    found = {p.split(INSTRUCTION_SEPARATOR, 1)[0] if INSTRUCTION_SEPARATOR in p else None
             for p in prompts}
    return found.pop() if len(found) == 1 else None


def _text(value: str) -> str:
    text = str(value)
    if len(text) <= TEXT_PREVIEW_CHARS:
        return html.escape(text)
    cut = text.rfind(" ", 0, TEXT_PREVIEW_CHARS)
    cut = cut if cut > TEXT_PREVIEW_CHARS // 2 else TEXT_PREVIEW_CHARS
    return (f"<details><summary>{html.escape(text[:cut])} …</summary>"
            f"{html.escape(text[cut:])}</details>")


def _pair(df_row: dict, col: str, digits: int = FLOAT_DIGITS) -> str:
    b, t = df_row.get(f"base_{col}"), df_row.get(f"tuned_{col}")
    if b is None or t is None or (isinstance(b, float) and math.isnan(b)):
        return '<td class="num muted">-</td>'
    if isinstance(b, float):
        return f'<td class="num">{b:.{digits}f}<br>{t:.{digits}f}</td>'
    return f'<td class="num">{html.escape(str(b))}<br>{html.escape(str(t))}</td>'


def table_html(df: pd.DataFrame, tie_threshold: float = 0.0) -> str:
    """The side-by-side table, fixed layout: every row; rows the tuned model wins (by the
    reward model beyond its tie threshold, else by gold) tinted, with a legend."""
    from rlhfkit.data import INSTRUCTION_SEPARATOR

    diff, thr = ("reward_diff", tie_threshold) if "reward_diff" in df else \
        ("gold_diff", 0.0) if "gold_diff" in df else (None, 0.0)
    instruction = shared_instruction(df["prompt"])
    cols = [("#", "3%"), ("post" if instruction is not None else "prompt", "25%"),
            ("base model", "23%"), ("tuned model", "23%"), ("words base / tuned", "7%")]
    scored = [(c, name) for c, name in (("reward", "reward base / tuned"),
                                        ("gold", "gold base / tuned")) if f"base_{c}" in df]
    cols += [(name, "7%") for _, name in scored]
    if "human" in df:
        cols.append(("human: tuned wins", "7%"))
    head = "".join(f'<th style="width:{w}">{html.escape(c)}</th>' for c, w in cols)
    rows = []
    for i, rec in enumerate(df.to_dict("records"), start=1):
        cls = ""
        d = rec.get(diff) if diff else None
        if isinstance(d, float) and not math.isnan(d):
            cls = ' class="win"' if d > thr else ' class="loss"' if d < -thr else ""
        prompt = rec["prompt"]
        if instruction is not None and INSTRUCTION_SEPARATOR in prompt:
            prompt = prompt.split(INSTRUCTION_SEPARATOR, 1)[1]
        limit = rec.get("word_limit")
        over = [not rec.get(f"{w}_within_limit", True) if limit is not pd.NA and limit
                is not None else False for w in ("base", "tuned")]
        words = "<br>".join(f"{rec[f'{w}_words']}{' ⚠' if o else ''}"
                            for w, o in zip(("base", "tuned"), over, strict=True))
        cells = [f'<td class="num">{i}</td>', f"<td>{_text(prompt)}</td>",
                 f"<td>{_text(rec['base_model'])}</td>", f"<td>{_text(rec['tuned_model'])}</td>",
                 f'<td class="num">{words}</td>']
        cells += [_pair(rec, c) for c, _ in scored]
        if "human" in df:
            h = rec["human"]
            cells.append('<td class="num muted">-</td>' if h is None or math.isnan(h) else
                         f'<td class="num">{h:.2f} ({rec["human_n"]})</td>')
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    by = "the reward model" if diff == "reward_diff" else "the gold annotator"
    legend = (f'<div class="legend" id="legend"><span><span class="swatch win"></span>tuned '
              f'better ({by}{f", difference > {thr:g}" if thr else ""})</span>'
              f'<span><span class="swatch loss"></span>base better</span>'
              '<span><span class="swatch"></span>tie</span>'
              '<span>⚠ over the instruction\'s word limit</span></div>') if diff else ""
    return (legend + '<table class="sbs" id="side-by-side"><thead><tr>' + head +
            "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _summary_table(summary: dict) -> str:
    rows = []
    for key, value in summary.items():
        shown = "-" if value is None else (f"{value:.{FLOAT_DIGITS}f}"
                                           if isinstance(value, float) else str(value))
        rows.append(f'<tr><th>{html.escape(_label(key))}</th><td class="num">'
                    f'{html.escape(shown)}</td><td class="muted">{html.escape(key)}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def runs_html(rows: list[dict]) -> str:
    from rlhfkit.compare_runs import cells, shown_columns

    cols = shown_columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(
        f'<td{"" if c in ("run", "method") else " class=num"}>{html.escape(cells(r)[c])}</td>'
        for c in cols) + "</tr>" for r in rows)
    return (f'<div class="wrap"><table class="runs" id="runs"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _curves_html(sections) -> str:
    out = []
    for heading, where, scalars in sections:
        out.append(f"<h3>{html.escape(heading)}</h3>")
        if not scalars:
            out.append(f'<p class="muted">No TensorBoard scalars found in '
                       f'{html.escape(where)}.</p>')
            continue
        tags = order_tags(scalars)
        curves = [t for t in tags if len(scalars[t]) > 1]
        once = [t for t in tags if len(scalars[t]) == 1]
        out.append('<div class="charts">' + "\n".join(line_chart(t, scalars[t])
                                                      for t in curves) + "</div>")
        if once:  # a chart of one point says nothing a number does not
            rows = "".join(f"<tr><th>{html.escape(t)}</th><td class=\"num\">"
                           f"{_fmt(scalars[t][0][1])}</td><td class=\"muted\">step "
                           f"{scalars[t][0][0]}</td></tr>" for t in once)
            out.append(f"<p class=\"muted\">Logged once:</p><table class=\"once\">{rows}</table>")
    return "\n".join(out)


def render(df: pd.DataFrame, summary: dict, notices: list[str], curves, title: str,
           summary_lines: list[str] | None = None, info=None, runs: list[dict] | None = None
           ) -> str:
    """The whole report as one HTML string. `curves`: read_run_curves' output; `info`: the
    run's compare_runs.RunInfo (KL, method); `runs`: the several-runs table rows."""
    notes = "".join(f'<li class="notice">{html.escape(n)}</li>' for n in notices)
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines or [])
    hists = [histogram(f"{c} difference per prompt", df[f"{c}_diff"],
                       f"{c} score, tuned - base")
             for c in ("reward", "gold") if f"{c}_diff" in df]
    hists = [h for h in hists if h]
    instruction = shared_instruction(df["prompt"])
    body = [
        f"<h1>{html.escape(title)}</h1>", summary_html(summary, info),
        (f'<p class="instruction" id="instruction"><b>Instruction, the same for every '
         f"prompt:</b> {html.escape(instruction)}</p>") if instruction else "",
        (f"<details><summary>The summary in words</summary><ul>{lines}</ul></details>")
        if lines else "",
        f"<h2>Notices</h2><ul>{notes}</ul>" if notes else "",
        (f"<h2>Runs compared</h2>{runs_html(runs)}") if runs else "",
        ("<h2>Score differences</h2><div class=\"charts\">" + "\n".join(hists) + "</div>")
        if hists else "",
        "<h2>Training curves</h2>", _curves_html(curves),
        "<h2>Side by side</h2>",
        table_html(df, summary.get("reward_tie_threshold") or 0.0),
        "<h2>Every aggregate</h2><details><summary>the numbers of <code>rlhfkit compare "
        "--json</code></summary>" + _summary_table(summary) + "</details>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
