"""What `rlhfkit compare` shows: the terminal table and summary lines, and model text
made safe for the places it goes (model output is hostile input: issue 9).

- CSV: text cells that a spreadsheet would run as a formula get a leading `'` (OWASP's
  advice against CSV injection);
- terminal: text is printed as rich `Text`, never as markup, with control characters
  and bidi overrides shown as escapes.
"""

from __future__ import annotations

import unicodedata

import pandas as pd

from rlhfkit.compare_metrics import CI_LEVEL
from rlhfkit.data import INSTRUCTION_SEPARATOR

TABLE_TEXT_CHARS = 70  # characters of each text shown in the terminal table
TABLE_MAX_ROWS = 20  # rows shown in the terminal; every row is in the CSV and the report

# -- output ------------------------------------------------------------------------------

# Spreadsheets run a cell that starts with one of these as a formula (CSV injection):
# OWASP's advice is to prefix such cells with a single quote, which shows as text.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# Unicode format characters that reorder or hide text in a terminal (bidi overrides and
# isolates, "Trojan Source", Boucher & Anderson 2021); shown escaped like control chars.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def csv_safe(value):
    """A text cell a spreadsheet cannot run: `'` before a leading = + - @ tab or CR."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def csv_safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table with every text cell neutralised (numbers stay numbers: -1.5 is data)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_object_dtype(out[col]) or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(csv_safe)
    return out


def visible(text: str) -> str:
    """Model text made safe for a terminal: control characters (ESC of ANSI colour and
    OSC hyperlink sequences, BEL, backspace, CR...) and bidi overrides are written as
    escapes (`\\x1b`, `\\u202e`) instead of acting on the terminal. Print the result
    as rich `Text` (never as markup) so `[/bold]` or `[link=...]` stay literal."""
    def esc(ch: str) -> str:
        if ch in _BIDI or (unicodedata.category(ch) == "Cc" and ch not in "\n"):
            return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
        return ch
    return "".join(esc(ch) for ch in str(text))


def _short(text: str, width: int = TABLE_TEXT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _post(prompt: str) -> str:
    """The prompt without its instruction (shared by every row, so not worth the space)."""
    return prompt.split(INSTRUCTION_SEPARATOR, 1)[1] if INSTRUCTION_SEPARATOR in prompt \
        else prompt


def format_summary(s: dict) -> list[str]:
    """The aggregates as short lines of text (terminal and report)."""
    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    lines = [f"prompts compared: {s['n']}"]
    if s["win_rate"] is not None:
        lines.append(f"reward-model win rate of tuned over base: {f(s['win_rate'])} "
                     f"({CI_LEVEL:.0%} CI {f(s['win_rate_ci_low'])}-{f(s['win_rate_ci_high'])}"
                     f"; {s['reward_wins']} wins / {s['reward_ties']} ties / "
                     f"{s['reward_losses']} losses, a tie when |score difference| <= "
                     f"{s['reward_tie_threshold']:g})")
        lines.append(f"  strict (every score difference decides): {f(s['win_rate_strict'])} "
                     f"({s['reward_wins_strict']}/{s['reward_ties_strict']}/"
                     f"{s['reward_losses_strict']})")
        lines.append(f"mean reward: base {f(s['mean_reward_base'])}, "
                     f"tuned {f(s['mean_reward_tuned'])}")
    if s["gold_win_rate"] is not None:
        lines.append(f"gold win rate (demo world, {s['n_gold']} prompts): "
                     f"{f(s['gold_win_rate'])} ({CI_LEVEL:.0%} CI "
                     f"{f(s['gold_win_rate_ci_low'])}-{f(s['gold_win_rate_ci_high'])}; "
                     f"{s['gold_wins']}/{s['gold_ties']}/{s['gold_losses']})")
        lines.append(f"mean gold score: base {f(s['mean_gold_base'])}, "
                     f"tuned {f(s['mean_gold_tuned'])}")
    lines.append(f"mean words: base {f(s['mean_words_base'], '.1f')}, "
                 f"tuned {f(s['mean_words_tuned'], '.1f')}")
    if s["within_limit_rate_base"] is not None:
        lines.append(f"within the instruction's word limit ({s['n_word_limit']} prompts): "
                     f"base {f(s['within_limit_rate_base'], '.0%')}, "
                     f"tuned {f(s['within_limit_rate_tuned'], '.0%')}")
    if s["mean_rouge_l_base"] is not None:
        lines.append(f"ROUGE-L F1 vs targets: base {f(s['mean_rouge_l_base'])}, "
                     f"tuned {f(s['mean_rouge_l_tuned'])}")
    from rlhfkit.label_eval import format_human

    return lines + format_human(s)


def print_table(df: pd.DataFrame, summary: dict, console=None,
                max_rows: int = TABLE_MAX_ROWS) -> None:
    """The side-by-side table (first rows, texts truncated) and the aggregates, with rich."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    table = Table(show_lines=True, title="tuned vs base")
    table.add_column("#", justify="right")
    for name in ("prompt", "base_model", "tuned_model"):
        table.add_column(name, overflow="fold")
    table.add_column("words\nbase/tuned", justify="right")
    extra = [c for c in ("reward", "gold") if f"base_{c}" in df]
    for c in extra:
        table.add_column(f"{c}\nbase/tuned", justify="right")
    for i, row in enumerate(df.head(max_rows).itertuples(index=False), start=1):
        r = row._asdict()
        texts = [_post(r["prompt"]), r["base_model"], r["tuned_model"]]
        cells = [str(i), *(Text(visible(_short(t))) for t in texts),
                 f"{r['base_words']}/{r['tuned_words']}"]
        cells += [f"{r[f'base_{c}']:.3f}/{r[f'tuned_{c}']:.3f}" for c in extra]
        table.add_row(*cells, style=None)
    console.print(table)
    if len(df) > max_rows:
        console.print(f"... {len(df) - max_rows} more rows in comparison.csv and report.html")
    for line in format_summary(summary):
        console.print(Text(visible(line)), highlight=False)


