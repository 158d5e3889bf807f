#!/usr/bin/env python3
"""Summarizes bench/peers.sh's runs: a Markdown table and an SVG plot (hand-written, no plotting library).

Usage: report.py RUNS_DIR OUT_MD OUT_SVG HEADER_FILE
RUNS_DIR holds one <system>-<adapters>-<rate>.json per run (tools/peers/trace_client.py's output) and
<system>-<adapters>-<rate>.skipped markers for rates skipped after the system fell below the skip threshold.
HEADER_FILE is the Markdown written above the tables.
"""
import glob
import json
import math
import os
import sys

NAMES = {"dlora": "dlora serve", "dlorabf16": "dlora serve, bf16 products", "llama": "llama-server", "peft": "transformers+PEFT"}
COLORS = {"dlora": "#d62728", "dlorabf16": "#ff7f0e", "llama": "#1f77b4", "peft": "#7f7f7f"}
ORDER = ["dlora", "dlorabf16", "llama", "peft"]


def attainment(share):
    """A share as a percentage: whole when it is one, else one decimal, so 115 of 128 (89.8 %, below the
    90 % bar) does not print as 90 %."""
    pct = share * 100
    return f"{pct:.0f} %" if abs(pct - round(pct)) < 1e-9 else f"{pct:.1f} %"


def load(runs):
    rows = {}
    for path in glob.glob(os.path.join(runs, "*.json")):
        s = json.load(open(path))["summary"]
        rows[(s["system"], s["adapters"], s["rate"])] = s
    skipped = set()
    for path in glob.glob(os.path.join(runs, "*.skipped")):
        system, n, rate = os.path.basename(path)[: -len(".skipped")].split("-")
        skipped.add((system, int(n), float(rate)))
    return rows, skipped


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    runs, out_md, out_svg, header = sys.argv[1:5]
    rows, skipped = load(runs)
    systems = [s for s in ORDER if any(k[0] == s for k in rows) or any(k[0] == s for k in skipped)]
    counts = sorted({k[1] for k in rows} | {k[1] for k in skipped})
    rates = sorted({k[2] for k in rows} | {k[2] for k in skipped})
    md = [open(header).read().rstrip(), ""]
    md += ["## Runs", "",
           "| system | adapters | rate req/s | completed | throughput tok/s | throughput req/s | SLO attainment | avg latency per token s | P90 latency s | median TTFT s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in counts:
        for s in systems:
            for r in rates:
                if (s, n, r) in skipped:
                    md.append(f"| {NAMES[s]} | {n} | {r:g} | skipped | | | | | | |")
                    continue
                x = rows.get((s, n, r))
                if x is None:
                    continue
                p90 = fmt(x["p90_latency_s"], ".2f") if x["p90_latency_s"] is not None else f"> {x['deadline_s'] - 0:.0f} (failed)"
                md.append(f"| {NAMES[s]} | {n} | {r:g} | {x['completed']}/{x['requests']} | {x['throughput_tok_s']:.1f} | "
                          f"{x['throughput_req_s']:.2f} | {attainment(x['slo_attainment'])} | {fmt(x['avg_latency_per_token_s'], '.3f')} | "
                          f"{p90} | {fmt(x['median_ttft_s'], '.2f')} |")
    md += ["", "## Throughput under the SLO", "",
           "The throughput of the highest rate at which ≥ 90 % of requests met the SLO (latency per generated token), per system and adapter count.",
           "", "| adapters | " + " | ".join(f"{NAMES[s]} rate / tok/s" for s in systems) + " | dlora / llama-server | dlora / PEFT |"
           + (" dlora bf16 / llama-server |" if "dlorabf16" in systems else ""),
           "|---:|" + "---:|" * (len(systems) + 2 + ("dlorabf16" in systems))]
    for n in counts:
        best = {}
        for s in systems:
            ok = [(r, rows[(s, n, r)]["throughput_tok_s"]) for r in rates if (s, n, r) in rows and rows[(s, n, r)]["slo_attainment"] >= 0.9]
            best[s] = max(ok) if ok else None
        cells = [f"{b[0]:g} / {b[1]:.1f}" if b else "below the lowest rate" for b in (best[s] for s in systems)]

        def ratio(a, b):
            if best.get(a) and best.get(b):
                return f"{best[a][1] / best[b][1]:.2f}"
            if best.get(a) and b in best:
                return "∞ (peer meets no rate)"
            return "—"
        md.append(f"| {n} | " + " | ".join(cells) + f" | {ratio('dlora', 'llama')} | {ratio('dlora', 'peft')} |"
                  + (f" {ratio('dlorabf16', 'llama')} |" if "dlorabf16" in systems else ""))
    md += ["", f"![avg latency per token vs rate]({os.path.basename(out_svg)})", ""]
    errors = sorted({e for x in rows.values() for e in x.get("errors", []) if e != "timeout"})
    if errors:
        md += ["Errors seen (other than timeouts): " + "; ".join(f"`{e[:120]}`" for e in errors[:5]), ""]
    open(out_md, "w").write("\n".join(md))
    svg(rows, systems, counts, rates, out_svg)


def svg(rows, systems, counts, rates, path):
    W, H, pad, top_margin = 340, 240, 50, 30
    vals = [x["avg_latency_per_token_s"] for x in rows.values() if x["avg_latency_per_token_s"]]
    slo = next((x["slo"] for x in rows.values()), 0.1)
    lo = 10 ** math.floor(math.log10(min(vals + [slo]))) if vals else 0.01
    hi = 10 ** math.ceil(math.log10(max(vals + [slo]))) if vals else 1
    if hi <= lo:
        hi = lo * 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * max(1, len(counts)) + 20}" height="{H + 70}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    for i, n in enumerate(counts):
        x0 = 10 + i * W
        xs = rates if len(rates) > 1 else rates + [rates[0] * 2]
        lx = lambda r: math.log2(r)
        xmin, xmax = lx(min(xs)), lx(max(xs))
        px = lambda r: x0 + pad + (W - pad - 20) * ((lx(r) - xmin) / (xmax - xmin) if xmax > xmin else 0.5)
        py = lambda v: H - (H - top_margin) * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        out.append(f'<text x="{x0 + W / 2}" y="15" text-anchor="middle">{n} adapters: avg latency per token (s, log) vs rate (req/s)</text>')
        out.append(f'<line x1="{x0 + pad}" y1="{H}" x2="{x0 + W - 10}" y2="{H}" stroke="black"/>'
                   f'<line x1="{x0 + pad}" y1="{top_margin}" x2="{x0 + pad}" y2="{H}" stroke="black"/>')
        d = lo
        while d <= hi * 1.0001:
            out.append(f'<text x="{x0 + pad - 4}" y="{py(d) + 4:.1f}" text-anchor="end">{d:g}</text>'
                       f'<line x1="{x0 + pad}" y1="{py(d):.1f}" x2="{x0 + W - 10}" y2="{py(d):.1f}" stroke="#ddd"/>')
            d *= 10
        out.append(f'<line x1="{x0 + pad}" y1="{py(slo):.1f}" x2="{x0 + W - 10}" y2="{py(slo):.1f}" stroke="black" stroke-dasharray="4,3"/>'
                   f'<text x="{x0 + W - 12}" y="{py(slo) - 3:.1f}" text-anchor="end">SLO {slo:g} s</text>')
        for r in rates:
            out.append(f'<text x="{px(r):.1f}" y="{H + 14}" text-anchor="middle">{r:g}</text>')
        for s in systems:
            pts = [(px(r), py(rows[(s, n, r)]["avg_latency_per_token_s"])) for r in rates
                   if (s, n, r) in rows and rows[(s, n, r)]["avg_latency_per_token_s"]]
            if pts:
                out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (COLORS[s], " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)))
                out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLORS[s]}"/>' for x, y in pts]
    for k, s in enumerate(systems):
        out.append(f'<rect x="{10 + k * 150}" y="{H + 35}" width="12" height="12" fill="{COLORS[s]}"/><text x="{26 + k * 150}" y="{H + 45}">{NAMES[s]}</text>')
    out.append(f'<text x="10" y="{H + 64}">Requests that missed the deadline are left out of the average (see the table\'s completed column).</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


if __name__ == "__main__":
    main()
