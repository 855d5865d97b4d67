"""Self-contained HTML for the reports: inline CSS and inline SVG charts, no CDN, no JavaScript, no fonts to fetch.

Why hand-written SVG and not a charting library: a report is mailed, archived and opened offline years later; it
must render identically in any browser with nothing to download, and it must not execute code. Three chart kinds
cover the reports: a multi-series line chart (trends), a horizontal bar chart (cost by team, model, provider) and a
bullet chart (budget versus actual). Every text is HTML-escaped; amounts are formatted from Decimal (never float),
while chart *geometry* uses float, which is only pixels.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal

__all__ = [
    "PALETTE",
    "bar_chart",
    "bullet_chart",
    "card",
    "esc",
    "line_chart",
    "money",
    "page",
    "pct",
    "table",
]

#: Colour-blind-safe categorical palette (Okabe-Ito), repeated when there are more series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_CENT = Decimal("0.01")

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:150px}
.card .v{font-size:20px;font-weight:600}.card .k{color:#57606a;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 12px}th,td{padding:4px 10px;border-bottom:1px solid #eaeef2}
th{text-align:left;background:#f6f8fa}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.warn{color:#9a6700}.bad{color:#cf222e}.note{color:#57606a;font-size:12px}
svg{display:block;margin:6px 0 14px}svg text{font-size:11px;fill:#1b1f24}
code{background:#f6f8fa;padding:1px 4px;border-radius:4px;font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}
"""


def esc(value: object) -> str:
    """HTML-escaped text of ``value`` (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def money(amount: Decimal | None, *, signed: bool = False) -> str:
    """``$1,234.57`` (half-up to cents, exact); ``n/a`` for None; ``signed`` adds ``+`` to positive amounts."""
    if amount is None:
        return "n/a"
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    sign = "-" if cents < 0 else ("+" if signed and cents > 0 else "")
    return f"{sign}${abs(cents):,.2f}"


def pct(value: Decimal | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)}%"


def page(title: str, subtitle: str, body: Iterable[str]) -> str:
    """A complete HTML document around ``body`` fragments (already escaped HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def card(label: str, value: str, css: str = "") -> str:
    return (f"<div class=\"card\"><div class=\"v {esc(css)}\">{esc(value)}</div>"
            f"<div class=\"k\">{esc(label)}</div></div>")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> str:
    """A table; columns whose index is in ``numeric`` are right-aligned. Cells are escaped."""
    nums = set(numeric)
    head = "".join(f"<th class=\"n\">{esc(h)}</th>" if i in nums else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"n\">{esc(c)}</td>" if i in nums else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f"<tr><td colspan=\"{len(headers)}\" class=\"note\">none</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _nice_max(value: float) -> float:
    """A round axis maximum >= value (1, 2, 2.5, 5 x 10^k)."""
    if value <= 0:
        return 1.0
    exp = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    while exp > value:
        exp /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return float(step * exp)
    return float(10 * exp)


def _axis_money(value: float) -> str:
    if value >= 1000:
        return f"${value / 1000:,.1f}k"
    if value >= 1:
        return f"${value:,.0f}" if value == int(value) else f"${value:,.2f}"
    return f"${value:.2f}"


def line_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[Decimal]], *, width: int = 900,
               height: int = 280) -> str:
    """A line chart of ``series`` (name -> one value per label) with a y axis in dollars and a legend."""
    left, right, top, bottom = 64, 160, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((float(v) for values in series.values() for v in values), default=0.0)
    ymax = _nice_max(peak)
    n = max(1, len(labels) - 1)
    parts = [f"<svg role=\"img\" aria-label=\"{esc(title)}\" class=\"chart line\" xmlns=\"http://www.w3.org/2000/svg\" "
             f"width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">",
             f"<title>{esc(title)}</title>",
             f"<text x=\"{left}\" y=\"14\" font-weight=\"600\">{esc(title)}</text>"]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f"<line x1=\"{left}\" y1=\"{y:.1f}\" x2=\"{left + plot_w}\" y2=\"{y:.1f}\" stroke=\"#eaeef2\"/>")
        parts.append(f"<text x=\"{left - 6}\" y=\"{y + 4:.1f}\" text-anchor=\"end\">"
                     f"{esc(_axis_money(ymax * i / 4))}</text>")
    step = max(1, len(labels) // 8)
    for i, label in enumerate(labels):
        if i % step == 0 or i == len(labels) - 1:
            x = left + plot_w * i / n
            parts.append(f"<text x=\"{x:.1f}\" y=\"{height - 14}\" text-anchor=\"middle\">{esc(label)}</text>")
    for k, (name, values) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = " ".join(
            f"{left + plot_w * i / n:.1f},{top + plot_h - plot_h * float(v) / ymax:.1f}" for i, v in enumerate(values)
        )
        parts.append(f"<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" "
                     f"points=\"{points}\"><title>{esc(name)}</title></polyline>")
        ly = top + 14 * k + 6
        parts.append(f"<rect x=\"{left + plot_w + 12}\" y=\"{ly - 8}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>")
        parts.append(f"<text x=\"{left + plot_w + 26}\" y=\"{ly + 1}\">{esc(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, items: Sequence[tuple[str, Decimal]], *, width: int = 900) -> str:
    """Horizontal bars, one per (label, amount), largest first as given; amounts printed at the bar's end."""
    row_h, left, right, top = 22, 220, 110, 24
    height = top + row_h * max(1, len(items)) + 8
    peak = max((float(v) for _, v in items), default=0.0)
    scale = (width - left - right) / peak if peak > 0 else 0.0
    parts = [f"<svg role=\"img\" aria-label=\"{esc(title)}\" class=\"chart bar\" xmlns=\"http://www.w3.org/2000/svg\" "
             f"width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">",
             f"<title>{esc(title)}</title>",
             f"<text x=\"0\" y=\"14\" font-weight=\"600\">{esc(title)}</text>"]
    for i, (label, value) in enumerate(items):
        y = top + i * row_h
        w = max(0.0, float(value) * scale)
        parts.append(f"<text x=\"{left - 8}\" y=\"{y + 15}\" text-anchor=\"end\">{esc(label[:34])}</text>")
        parts.append(f"<rect class=\"bar\" x=\"{left}\" y=\"{y + 4}\" width=\"{w:.1f}\" height=\"{row_h - 8}\" "
                     f"fill=\"{PALETTE[0]}\"><title>{esc(label)}: {esc(money(value))}</title></rect>")
        parts.append(f"<text x=\"{left + w + 6:.1f}\" y=\"{y + 15}\">{esc(money(value))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bullet_chart(title: str, items: Sequence[tuple[str, Decimal, Decimal]], *, width: int = 900) -> str:
    """Budget versus actual: for each (label, actual, limit) a grey budget bar and a coloured actual bar (green
    below 80 %, amber to 100 %, red above)."""
    row_h, left, right, top = 26, 220, 170, 24
    height = top + row_h * max(1, len(items)) + 8
    peak = max((max(float(a), float(b)) for _, a, b in items), default=0.0)
    scale = (width - left - right) / peak if peak > 0 else 0.0
    parts = [f"<svg role=\"img\" aria-label=\"{esc(title)}\" class=\"chart bullet\" "
             f"xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" "
             f"viewBox=\"0 0 {width} {height}\">", f"<title>{esc(title)}</title>",
             f"<text x=\"0\" y=\"14\" font-weight=\"600\">{esc(title)}</text>"]
    for i, (label, actual, limit) in enumerate(items):
        y = top + i * row_h
        ratio = float(actual / limit) if limit > 0 else 2.0
        colour = "#1a7f37" if ratio < 0.8 else ("#bf8700" if ratio <= 1.0 else "#cf222e")
        parts.append(f"<text x=\"{left - 8}\" y=\"{y + 17}\" text-anchor=\"end\">{esc(label[:34])}</text>")
        parts.append(f"<rect x=\"{left}\" y=\"{y + 3}\" width=\"{float(limit) * scale:.1f}\" height=\"{row_h - 6}\" "
                     "fill=\"#d0d7de\"/>")
        parts.append(f"<rect class=\"bar\" x=\"{left}\" y=\"{y + 8}\" width=\"{max(0.0, float(actual) * scale):.1f}\" "
                     f"height=\"{row_h - 16}\" fill=\"{colour}\"/>")
        parts.append(f"<text x=\"{left + max(float(actual), float(limit)) * scale + 6:.1f}\" y=\"{y + 17}\">"
                     f"{esc(money(actual))} / {esc(money(limit))}</text>")
    parts.append("</svg>")
    return "".join(parts)
