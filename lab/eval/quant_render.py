"""A quantization report (lab/eval/quant.py's `load_report` dict) as a text table, Markdown, and one self-contained
HTML page (inline CSS and SVG charts; no script, font or image from anywhere else).

    print(render_text(report)); Path("r.md").write_text(render_markdown(report)); Path("r.html").write_text(...)

Every view shows the same numbers: one row per variant; per benchmark the accuracy with its 95% interval, the
difference from the reference with its paired interval and McNemar's p, and the agreement; then speed and memory.
Model text (prompts, outputs) is escaped as lab/eval/report.py escapes it, then HTML-escaped.
"""

from __future__ import annotations

import html

from lab.eval import report as text_report

GIB = 2**30
MAX_FLIPS_LISTED = 200  # per benchmark and variant, in the HTML (the JSON export has every one)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


# ---- cells --------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _signed(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def acc_cell(res: dict | None) -> str:
    if not res or res.get("accuracy") is None:
        return "-"
    lo, hi = res["ci"]
    return f"{_pct(res['accuracy'])} [{_pct(lo)}, {_pct(hi)}]"


def delta_cell(res: dict | None) -> str:
    if not res or res.get("delta") is None:
        return "-"
    lo, hi = res["delta_ci"]
    return f"{_signed(res['delta'])} [{_signed(lo)}, {_signed(hi)}]" + (" noise" if res["within_noise"] else "")


def p_cell(res: dict | None) -> str:
    if not res or res.get("p_mcnemar") is None or res.get("delta") is None:
        return "-"
    p = res["p_mcnemar"]
    return "1" if p >= 0.9995 else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _gib(n) -> str:
    if n is None:
        return "-"
    gib = n / GIB
    return f"{gib:.2f}" if gib >= 0.1 else f"{gib:.4f}"


def _num(x, fmt: str, scale: float = 1) -> str:
    return "-" if x is None else format(x * scale, fmt)


def headers(report: dict) -> list[str]:
    h = ["variant"]
    for b in report["benchmarks"]:
        name = b["name"]
        h += [f"{name} {'pass@1' if b['kind'] == 'code' else 'acc'} % [95% CI]", f"{name} Δ pts [paired 95% CI]",
              f"{name} McNemar p", f"{name} agree %"]
    return h + ["tok/s", "TTFT ms", "weights GiB", "peak GiB", "load s", "note"]


def rows(report: dict) -> list[list[str]]:
    out = []
    for v in report["variants"]:
        row = [v["variant"] + (" (ref)" if v["reference"] else "")]
        for b in report["benchmarks"]:
            res = v["results"].get(b["name"])
            agree = None if not res or v["reference"] else res.get("agreement")
            row += [acc_cell(res), delta_cell(res), p_cell(res), _pct(agree)]
        m = v["measured"] or {}
        note = v["error"] or m.get("speed_error") or ("" if v["status"] == "done" else v["status"])
        row += [_num(m.get("decode_tok_s"), ".1f"), _num(m.get("ttft_s"), ".1f", 1000), _gib(m.get("weight_bytes")),
                _gib(m.get("peak_bytes")), _num(m.get("load_s"), ".1f"), note]
        out.append(row)
    return out


def title(report: dict) -> str:
    q = report["request"]
    return f"What quantization costs: {q['model']}, {', '.join(q['variants'])}"


def describe(report: dict) -> str:
    q = report["request"]
    parts = [f"report {report['id']} ({report['status']})", f"benchmarks {', '.join(q['benchmarks'])}",
             f"seed {q['seed']}"]
    if q.get("limit"):
        parts.append(f"limit {q['limit']} per benchmark")
    if q.get("shots") is not None:
        parts.append(f"{q['shots']} shots")
    return "; ".join(parts)


def timing_line(report: dict) -> str:
    """The measured overhead: everything but the runs (loading counted), and what is left with loading counted as
    work separate runs would do too."""
    t = report.get("timing")
    if not t or not t.get("runs_s"):
        return ""
    share = " (this process's share of a resumed report)" if t.get("resumed") else ""
    line = (f"Overhead: {t['overhead_s']:.1f} s over {t['runs_s']:.1f} s of runs = {t['overhead_pct']:.1f}%, "
            f"loading included (loading {t['load_s']:.1f} s, speed measurement {t['measure_s']:.1f} s, "
            f"bookkeeping {t['overhead_s'] - t['load_s'] - t['measure_s']:.1f} s)")
    if t.get("added_pct") is not None:
        line += (f"; beyond the runs and one load per variant, which separate runs would need too: "
                 f"{t['added_s']:.1f} s = {t['added_pct']:.1f}%")
    return line + share + "."


def notes(report: dict) -> list[str]:
    n = [report["notes"]["score"], report["notes"]["interval"], report["notes"]["agreement"],
         "'noise' marks a difference whose paired interval contains 0. tok/s and TTFT: one reply at batch 1 on the "
         "page's chat path; weights: the loaded model's footprint; peak: the most GPU memory allocated during the "
         "evaluation (CUDA only; '-' elsewhere)."]
    if report.get("reference_note"):
        n.insert(0, report["reference_note"])
    return n


# ---- text and Markdown --------------------------------------------------------------------------
def render_text(report: dict) -> str:
    """The CLI's view: the table, what it means, the overhead."""
    table = text_report.table(headers(report), rows(report), align="l" + "r" * (len(headers(report)) - 2) + "l")
    lines = [title(report), describe(report), "", table, ""]
    lines += notes(report)
    flips = len(report["flips"])
    lines.append(f"{flips} items flipped (right for one of reference and variant, wrong for the other); "
                 "the HTML export opens each with its prompt and both outputs.")
    if timing_line(report):
        lines.append(timing_line(report))
    return text_report.escape("\n".join(lines))


def _md_row(cells) -> str:
    return "| " + " | ".join(text_report.one_line(str(c), 400).replace("|", "\\|") for c in cells) + " |"


def render_markdown(report: dict) -> str:
    h = headers(report)
    lines = [f"# {title(report)}", "", describe(report), "", _md_row(h), "| " + " | ".join("---" for _ in h) + " |"]
    lines += [_md_row(r) for r in rows(report)]
    lines += [""] + [f"- {n}" for n in notes(report)]
    for b in report["benchmarks"]:
        lines += _md_breakdown(report, b["name"])
    lines += ["", "## Items that flipped", ""]
    if not report["flips"]:
        lines.append("None: every variant got the same items right as the reference.")
    for f in report["flips"][:MAX_FLIPS_LISTED]:
        way = "now right" if f["correct"] else "now wrong"
        lines.append(f"- {f['benchmark']} · {f['variant']} · `{text_report.one_line(f['key'], 80)}`: reference "
                     f"{_short(f['reference_answer'])}, variant {_short(f['answer'])}, gold {_short(f['gold'])} "
                     f"({way})")
    if len(report["flips"]) > MAX_FLIPS_LISTED:
        lines.append(f"- ... {len(report['flips']) - MAX_FLIPS_LISTED} more in the JSON export")
    lines.append("")
    lines.append("Prompts and both outputs of every flipped item are in the HTML and JSON exports.")
    if timing_line(report):
        lines += ["", timing_line(report)]
    return text_report.escape("\n".join(lines)) + "\n"


def _short(x) -> str:
    return "-" if x is None else text_report.one_line(str(x), 40)


def _md_breakdown(report: dict, bench: str) -> list[str]:
    others = [v for v in report["variants"] if not v["reference"] and bench in v["results"]
              and v["results"][bench].get("groups")]
    if not others:
        return []
    lines = ["", f"## {bench}: difference from the reference by category and subject (points, paired 95% CI)", "",
             _md_row(["group", "n", *[v["variant"] for v in others]]), "| --- | --- |" + " --- |" * len(others)]
    for level in ("groups", "subjects"):
        names = list(others[0]["results"][bench][level])
        for name in names:
            cells = [delta_cell(v["results"][bench][level].get(name)) for v in others]
            n = others[0]["results"][bench][level][name]["n"]
            lines.append(_md_row([name if level == "groups" else f"· {name}", n, *cells]))
    return lines


# ---- HTML -----------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}td.note{text-align:left;color:#a00}
.noise{color:#888}pre{background:#f7f7f7;padding:.5em;white-space:pre-wrap;max-height:24em;overflow:auto}
details{margin:.2em 0}summary{cursor:pointer}.right{color:#070}.wrong{color:#a00}svg text{font-size:11px}
"""


def _e(text) -> str:
    return html.escape(text_report.escape("" if text is None else str(text), keep="\n\t"))


def render_html(report: dict) -> str:
    """One page, nothing fetched: the table, the notes, a chart per benchmark, the flipped items."""
    h = headers(report)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title(report))}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{_e(title(report))}</h1>", f"<p>{_e(describe(report))}</p>",
           "<table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in h) + "</tr></thead><tbody>"]
    for r in rows(report):
        cells = [f'<td class="noise">{_e(c)}</td>' if c.endswith(" noise") else f"<td>{_e(c)}</td>" for c in r[:-1]]
        out.append("<tr>" + "".join(cells) + f'<td class="note">{_e(r[-1])}</td></tr>')
    out.append("</tbody></table><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes(report)) + "</ul>")
    if timing_line(report):
        out.append(f"<p>{_e(timing_line(report))}</p>")
    for b in report["benchmarks"]:
        out += _html_charts(report, b["name"])
    out.append("<h2>Items that flipped</h2>")
    if not report["flips"]:
        out.append("<p>None: every variant got the same items right as the reference.</p>")
    out += _html_flips(report)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_charts(report: dict, bench: str) -> list[str]:
    others = [v for v in report["variants"] if not v["reference"] and v["results"].get(bench, {}).get("groups")]
    if not others:
        return []
    out = [f"<h2>{_e(bench)}: difference from the reference {_e(report['reference'])}</h2>"]
    for level, label in (("groups", "by category"), ("subjects", "by subject")):
        names = list(others[0]["results"][bench][level])
        series = [(v["variant"], [v["results"][bench][level].get(n) for n in names]) for v in others]
        out.append(f"<h3>{label} (points; bars are the difference, whiskers its paired 95% interval)</h3>")
        out.append(delta_chart(names, series))
    return out


def delta_chart(names: list[str], series: list[tuple[str, list[dict | None]]]) -> str:
    """Horizontal bars, one row per name and one bar per series, around a zero line: an inline SVG."""
    label_w, plot_w, bar_h, gap = 230, 560, 9, 6
    row_h = bar_h * len(series) + gap
    top = 18 + 14 * len(series)
    height = top + row_h * len(names) + 24
    bound = max([0.05] + [abs(x) for _, vals in series for r in vals if r and r.get("delta_ci") for x in r["delta_ci"]])

    def x(value: float) -> float:
        return label_w + plot_w / 2 + value / bound * plot_w / 2

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 20}" height="{height}" role="img">']
    for i, (name, _) in enumerate(series):  # legend
        svg.append(f'<rect x="{label_w}" y="{4 + 14 * i}" width="10" height="10" fill="{COLORS[i % len(COLORS)]}"/>'
                   f'<text x="{label_w + 14}" y="{13 + 14 * i}">{_e(name)}</text>')
    for r, name in enumerate(names):
        y0 = top + r * row_h
        svg.append(f'<text x="{label_w - 6}" y="{y0 + row_h / 2 + 2:.1f}" text-anchor="end">'
                   f"{_e(text_report.one_line(name, 36))}</text>")
        for i, (variant, vals) in enumerate(series):
            res, y = vals[r], y0 + i * bar_h
            if not res or res.get("delta") is None:
                continue
            d, (lo, hi) = res["delta"], res["delta_ci"]
            color = COLORS[i % len(COLORS)]
            left, right = sorted((x(0), x(d)))
            tip = f"{variant} {name}: {delta_cell(res)} pts, n={res['n']}, McNemar p={p_cell(res)}"
            svg.append(f'<g><title>{_e(tip)}</title><rect x="{left:.1f}" y="{y + 1}" '
                       f'width="{max(right - left, 1):.1f}" '
                       f'height="{bar_h - 2}" fill="{color}" fill-opacity="0.75"/>'
                       f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y + bar_h / 2}" y2="{y + bar_h / 2}" '
                       f'stroke="#333"/></g>')
    base = top + row_h * len(names)
    svg.append(f'<line x1="{x(0)}" x2="{x(0)}" y1="{top - 4}" y2="{base}" stroke="#000"/>')
    for v in (-bound, -bound / 2, 0, bound / 2, bound):
        svg.append(f'<text x="{x(v):.1f}" y="{base + 14}" text-anchor="middle">{100 * v:+.0f}</text>')
    return "".join(svg) + "</svg>"


def _html_flips(report: dict) -> list[str]:
    out, counts = [], {}
    ref = report["reference"]
    for f in report["flips"]:
        where = (f["benchmark"], f["variant"])
        counts[where] = counts.get(where, 0) + 1
        if counts[where] == 1:
            out.append(f"<h3>{_e(f['benchmark'])} · {_e(f['variant'])} against {_e(ref)}</h3>")
        if counts[where] > MAX_FLIPS_LISTED:
            continue
        way = '<span class="right">now right</span>' if f["correct"] else '<span class="wrong">now wrong</span>'
        summary = (f"{_e(text_report.one_line(f['key'], 80))} · reference {_e(_short(f['reference_answer']))}, "
                   f"{_e(f['variant'])} {_e(_short(f['answer']))}, gold {_e(_short(f['gold']))} · {way}")
        out.append(f"<details><summary>{summary}</summary>"
                   f"<h4>Prompt</h4><pre>{_e(text_report.block(f['prompt']))}</pre>"
                   f"<h4>{_e(ref)} output</h4><pre>{_e(text_report.block(f['reference_output']))}</pre>"
                   f"<h4>{_e(f['variant'])} output</h4><pre>{_e(text_report.block(f['output']))}</pre></details>")
    for (bench, variant), n in counts.items():
        if n > MAX_FLIPS_LISTED:
            out.append(f"<p>{_e(bench)} · {_e(variant)}: {n - MAX_FLIPS_LISTED} more flipped items are in the JSON "
                       "export.</p>")
    return out
