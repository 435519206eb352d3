"""Render a small table of display strings as a terminal table, Markdown, CSV or HTML.

Shared by the leaderboard and the device comparison. Run names come from users and sweeps, so every
format defends itself: control characters never reach a terminal, `|` cannot split a Markdown cell,
a CSV cell cannot start a spreadsheet formula, and HTML is escaped.
"""

from __future__ import annotations

import html
import io
import math
import re

import pandas as pd

FORMATS = ("table", "md", "csv", "html")
MISSING = "—"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# OWASP's list: a cell starting with one of these is run as a formula by Excel, LibreOffice, Sheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 16px; color: #1a1a1a; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 5px; text-align: left; }
td:nth-child(2) { min-width: 9em; max-width: 24em; overflow-wrap: break-word; }  /* run names */
table.leaderboard td.reason { min-width: 7em; overflow-wrap: anywhere; }  /* long failure text */
th { background: #f0f0f0; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
tr.not-finished td { color: #a33; }
.note { color: #555; font-size: 0.9em; }
"""


# -- cells ----------------------------------------------------------------------------------------


def clean_text(value) -> str:
    """One printable line: names can hold newlines or terminal escape sequences."""
    return _CONTROL.sub(" ", str(value))


def defuse_formula(value):
    """Prefix a quote to strings a spreadsheet would evaluate; numbers are left as numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def pct(mean, std=math.nan, n=1) -> str:
    """Accuracy fraction as percent; `mean ± std` when several seeds were folded."""
    if is_missing(mean):
        return MISSING
    if n > 1 and not is_missing(std):
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{100 * mean:.2f}"


def seconds(value) -> str:
    if is_missing(value):
        return MISSING
    value = float(value)
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def duration(value) -> str:
    """A whole run's length in one unit, for prose and reports: 45 s, 7.9 min, 1.1 h."""
    if is_missing(value):
        return MISSING
    value = float(value)
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"


def count(value) -> str:
    """Parameter counts: 1.23M, 45.1k."""
    if is_missing(value):
        return MISSING
    value = float(value)
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def number(value, spec: str = "g") -> str:
    return MISSING if is_missing(value) else format(value, spec)


# -- whole tables ---------------------------------------------------------------------------------


def _text_table(frame: pd.DataFrame, numeric: set[str]) -> str:
    cells = [[clean_text(v) for v in row] for row in frame.itertuples(index=False)]
    headers = [clean_text(c) for c in frame.columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [
            v.rjust(w) if col in numeric else v.ljust(w) for v, w, col in zip(values, widths, frame.columns)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [line(r) for r in cells]) + "\n"


def _md_cell(value) -> str:
    # `|` would split the cell; raw HTML in a name would be rendered by most Markdown viewers.
    return html.escape(clean_text(value), quote=False).replace("|", "\\|")


def _markdown(frame: pd.DataFrame, numeric: set[str]) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    align = "|" + "|".join("---:" if c in numeric else "---" for c in frame.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, align] + body) + "\n"


def html_table(frame: pd.DataFrame, numeric: set[str], row_classes: list[str] | None = None,
               css_class: str = "", column_classes: dict[str, str] | None = None) -> str:
    """An escaped <table> fragment (for the standalone page and for the report)."""
    esc = html.escape
    out = [f'<table class="{esc(css_class)}">', "<thead><tr>"]
    out += [f"<th>{esc(clean_text(c))}</th>" for c in frame.columns]
    out.append("</tr></thead>\n<tbody>")
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = row_classes[i] if row_classes else ""
        out.append(f'<tr class="{esc(cls)}">' if cls else "<tr>")
        for col, value in zip(frame.columns, row):
            cls = "num" if col in numeric else (column_classes or {}).get(col, "")
            attr = f' class="{cls}"' if cls else ""
            out.append(f"<td{attr}>{esc(clean_text(value))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "\n".join(out) + "\n"


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline CSS, no script, nothing fetched."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style></head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{body}</body></html>\n"
    )


def csv_text(frame: pd.DataFrame) -> str:
    """Raw values for machines; numbers keep 6 significant digits, strings are defused."""
    safe = frame.copy()
    for col in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[col]):  # object or pandas' own string dtype
            safe[col] = safe[col].map(defuse_formula)
    buf = io.StringIO()
    safe.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


def render_display(frame: pd.DataFrame, fmt: str, numeric: set[str], title: str = "",
                   row_classes: list[str] | None = None, css_class: str = "") -> str:
    """table / md / html of a frame of display strings (CSV has its own raw path: `csv_text`)."""
    if fmt == "table":
        return _text_table(frame, numeric)
    if fmt == "md":
        return _markdown(frame, numeric)
    if fmt == "html":
        return html_page(title, html_table(frame, numeric, row_classes, css_class))
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
