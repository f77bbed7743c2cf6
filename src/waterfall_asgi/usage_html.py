"""The usage report as one self-contained HTML page (``waterfall-asgi usage --html FILE``).

From a ledger's records (SQLite or PostgreSQL, see
:func:`~waterfall_asgi.ledger_sqlite.read_records`): spend over time by provider and model (one
chart per cost unit: units are never mixed), tokens over time by provider and model, the
fall-through and error rates over time, the time to first byte's 50th, 95th and 99th percentiles
over time, and the totals by provider and model. The charts are inline SVG drawn here, the
styles inline CSS; the page has no script and loads nothing: it opens from a file, offline.

Time is cut into equal buckets (a minute up to a week, whichever gives at most
:data:`MAX_BUCKETS`); a series is a provider and the model it served (``provider/model``); the
:data:`MAX_SERIES` largest are drawn, the rest summed as ``other``. A request *fell through*
when it moved from one entry to another (a retry on the same entry does not count); an *error*
is a finished request with any status but ``success`` (``pending`` ones are in flight, counted
apart).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .ledger import UsageRecord
from .usage_report import UsageReport, percentile

__all__ = ["MAX_BUCKETS", "MAX_SERIES", "fell_through", "render_html"]

MAX_BUCKETS = 60
"""The most time buckets a chart has."""
MAX_SERIES = 8
"""The most series a chart draws (the rest are summed as ``other``)."""

_STEPS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
_OTHER = "#bab0ac"
_W, _H = 880, 240  # a chart's size
_L, _R, _T, _B = 64, 12, 12, 36  # its margins


def fell_through(record: UsageRecord) -> bool:
    """Whether ``record`` moved from one entry to another.

    >>> r = UsageRecord(id="x", started_at=0, route="/v1/chat/completions")
    >>> r.attempts = [{"entry": "a/m", "outcome": "retried"}, {"entry": "a/m", "outcome": "served"}]
    >>> fell_through(r)
    False
    >>> r.attempts.append({"entry": "b/m", "outcome": "served"})
    >>> fell_through(r)
    True
    """
    entries = {a.get("entry") for a in record.attempts}
    return len(entries) > 1


def _step(first: float, last: float) -> int:
    span = max(last - first, 1.0)
    for step in _STEPS:
        if span / step <= MAX_BUCKETS:
            return step
    return _STEPS[-1] * math.ceil(span / (_STEPS[-1] * MAX_BUCKETS))


@dataclass
class _Buckets:
    start: float
    step: int
    count: int

    def index(self, moment: float) -> int:
        return min(int((moment - self.start) // self.step), self.count - 1)

    def label(self, i: int) -> str:
        moment = datetime.fromtimestamp(self.start + i * self.step, UTC)
        if self.step >= 86400:
            return moment.strftime("%m-%d")
        return moment.strftime("%m-%d %H:%M") if i == 0 else moment.strftime("%H:%M")


def _series(record: UsageRecord) -> str:
    return f"{record.provider}/{record.upstream_model or '?'}"


def _top(totals: dict[str, float]) -> list[str]:
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    return ranked[:MAX_SERIES]


def _stacked(
    buckets: _Buckets,
    values: dict[str, list[float]],
    title: str,
    unit: str,
    colours: dict[str, str],
) -> tuple[str, list[str]]:
    """A stacked bar chart of ``values`` (series -> per bucket) and its series, in order
    (``colours``: each series' colour, the same in every chart)."""
    totals = {k: sum(v) for k, v in values.items()}
    keep = _top(totals)
    drawn: dict[str, list[float]] = {k: values[k] for k in keep}
    rest = [k for k in values if k not in keep]
    if rest:
        drawn["other"] = [sum(values[k][i] for k in rest) for i in range(buckets.count)]
    heights = [sum(v[i] for v in drawn.values()) for i in range(buckets.count)]
    top = _nice(max(heights, default=0.0))
    plot_w, plot_h = _W - _L - _R, _H - _T - _B
    bar = plot_w / buckets.count
    parts = [_frame(title, top, unit, buckets)]
    for i in range(buckets.count):
        y: float = _T + plot_h
        for name, series in drawn.items():
            v = series[i]
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            parts.append(
                f'<rect x="{_L + i * bar + 1:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colours.get(name, _OTHER)}">'
                f"<title>{html.escape(name)} {buckets.label(i)}: {_num(v)} {unit}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts), list(drawn)


def _lines(buckets: _Buckets, values: dict[str, list[float | None]], title: str, unit: str) -> str:
    """A line chart: one polyline per series (gaps where a bucket has no value)."""
    flat = [v for series in values.values() for v in series if v is not None]
    top = _nice(max(flat, default=0.0))
    plot_w, plot_h = _W - _L - _R, _H - _T - _B
    step = plot_w / buckets.count
    parts = [_frame(title, top, unit, buckets)]
    for n, (name, series) in enumerate(values.items()):
        colour = _COLOURS[n % len(_COLOURS)]
        points = []
        for i, v in enumerate(series):
            if v is None:
                continue
            x, y = _L + (i + 0.5) * step, _T + plot_h - plot_h * v / top
            points.append(f"{x:.1f},{y:.1f}")
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                f"<title>{html.escape(name)} {buckets.label(i)}: {_num(v)} {unit}</title>"
                "</circle>"
            )
        if len(points) > 1:
            parts.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                'stroke-width="2"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _frame(title: str, top: float, unit: str, buckets: _Buckets) -> str:
    plot_w, plot_h = _W - _L - _R, _H - _T - _B
    out = [
        f'<svg width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<rect x="{_L}" y="{_T}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for k in range(5):
        value = top * k / 4
        y = _T + plot_h - plot_h * k / 4
        out.append(
            f'<line x1="{_L}" y1="{y:.1f}" x2="{_L + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_num(value)}'
            "</text>"
        )
    out.append(
        f'<text x="12" y="{_T + plot_h / 2:.1f}" class="tick" '
        f'transform="rotate(-90 12 {_T + plot_h / 2:.1f})" text-anchor="middle">'
        f"{html.escape(unit)}</text>"
    )
    every = max(1, math.ceil(buckets.count / 8))
    bar = plot_w / buckets.count
    for i in range(0, buckets.count, every):
        x = _L + (i + 0.5) * bar
        out.append(
            f'<text x="{x:.1f}" y="{_T + plot_h + 18}" text-anchor="middle" class="tick">'
            f"{buckets.label(i)}</text>"
        )
    return "".join(out)


def _nice(value: float) -> float:
    """A round upper bound for an axis (at least 1)."""
    if value <= 1:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _num(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _legend(names: Sequence[str], colours: dict[str, str] | None = None) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background:'
        f'{(colours or {}).get(name) or _COLOURS[n % len(_COLOURS)]}"></span>'
        f"{html.escape(name)}</li>"
        for n, name in enumerate(names)
    )
    return f'<ul class="legend">{items}</ul>'


def render_html(
    records: Iterable[UsageRecord], *, title: str = "waterfall-asgi usage", source: str = ""
) -> str:
    """The report page of ``records`` (see the module docs)."""
    rows = sorted(records, key=lambda r: r.started_at)
    head = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
    )
    if not rows:
        return head + f"<p>{html.escape(source)}: no requests recorded.</p></body></html>"
    first, last = rows[0].started_at, rows[-1].started_at
    step = _step(first, last)
    start = first - first % step
    buckets = _Buckets(start, step, max(1, int((last - start) // step) + 1))
    n = buckets.count
    spend: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0] * n))
    tokens: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    requests, falls, errors, finished = [0] * n, [0] * n, [0] * n, [0] * n
    ttfb: list[list[float]] = [[] for _ in range(n)]
    for r in rows:
        i = buckets.index(r.started_at)
        requests[i] += 1
        falls[i] += fell_through(r)
        if r.status != "pending":
            finished[i] += 1
            errors[i] += r.status != "success"
        if r.provider is not None:
            if r.cost is not None and r.cost_unit is not None:
                spend[r.cost_unit][_series(r)][i] += r.cost
            if r.total_tokens or r.prompt_tokens or r.completion_tokens:
                used = r.total_tokens or (r.prompt_tokens or 0) + (r.completion_tokens or 0)
                tokens[_series(r)][i] += used
            if r.ttfb_ms is not None:
                ttfb[i].append(r.ttfb_ms)
    served: dict[str, int] = defaultdict(int)
    for r in rows:
        if r.provider is not None:
            served[_series(r)] += 1
    ranked = sorted(served, key=lambda k: (-served[k], k))
    colours = {k: _COLOURS[n % len(_COLOURS)] for n, k in enumerate(ranked[:MAX_SERIES])}
    colours["other"] = _OTHER
    span = f"{_when(first)} to {_when(last)} UTC"
    parts = [
        head,
        f'<p class="meta">{html.escape(source)} · {len(rows):,} requests · {span} · '
        f"buckets of {_duration(step)}</p>",
    ]
    for unit, series in sorted(spend.items()):
        chart, names = _stacked(buckets, series, f"Spend ({unit})", unit, colours)
        parts += [f"<h2>Spend by provider and model ({html.escape(unit)})</h2>", chart]
        parts.append(_legend(names, colours))
    if not spend:
        parts.append("<h2>Spend</h2><p>No priced request in this range.</p>")
    chart, names = _stacked(buckets, tokens, "Tokens", "tokens", colours)
    parts += ["<h2>Tokens by provider and model</h2>", chart, _legend(names, colours)]
    rates: dict[str, list[float | None]] = {
        "fall-through %": [
            100 * f / q if q else None for f, q in zip(falls, requests, strict=True)
        ],
        "error %": [100 * e / q if q else None for e, q in zip(errors, finished, strict=True)],
    }
    parts += ["<h2>Fall-through and error rates</h2>", _lines(buckets, rates, "Rates", "%")]
    parts.append(_legend(list(rates)))
    quantiles: dict[str, list[float | None]] = {
        f"p{p}": [percentile(values, p) for values in ttfb] for p in (50, 95, 99)
    }
    parts += ["<h2>Time to first byte</h2>", _lines(buckets, quantiles, "TTFB", "ms")]
    parts.append(_legend(list(quantiles)))
    parts.append("<h2>Totals by provider and model</h2>")
    report = UsageReport.from_records(rows, by=("provider", "upstream_model"))
    parts.append(_table(report))
    parts.append("</body></html>")
    return "".join(parts)


def _share(part: int, whole: int) -> float | None:
    return 100 * part / whole if whole else None


def _table(report: UsageReport) -> str:
    head = (
        "<tr><th>provider</th><th>model</th><th>requests</th><th>errors</th><th>error %</th>"
        "<th>prompt</th><th>completion</th><th>cost</th><th>ttfb p50 ms</th>"
        "<th>ttfb p95 ms</th></tr>"
    )
    body = []
    for g in [*report.groups, report.total]:
        names = [g.key.get("provider"), g.key.get("upstream_model")] if g.key else ["TOTAL", ""]
        cost = ", ".join(f"{v:,} {u}" for u, v in sorted(g.cost.items())) or "-"
        cells = [
            *(html.escape(x or "-") for x in names),
            f"{g.requests:,}",
            f"{g.errors:,}",
            f"{g.error_rate * 100:.1f}%",
            f"{g.prompt_tokens:,}",
            f"{g.completion_tokens:,}",
            html.escape(cost),
            "-" if g.ttfb_p50 is None else f"{g.ttfb_p50:.1f}",
            "-" if g.ttfb_p95 is None else f"{g.ttfb_p95:.1f}",
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;"
    "max-width:960px}h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 6px}"
    ".meta{color:#666;margin:0 0 8px}.tick{font-size:11px;fill:#555}"
    ".legend{list-style:none;padding:0;margin:4px 0 0;display:flex;flex-wrap:wrap;gap:4px 16px;"
    "font-size:13px}.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;"
    "vertical-align:-1px;border-radius:2px}table{border-collapse:collapse;font-size:13px;"
    "margin-top:4px}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right;"
    "white-space:nowrap}"
    "th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}tr:last-child td{font-weight:600}"
)
