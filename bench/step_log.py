#!/usr/bin/env python3
"""Compares step logs (`dlora serve --step-log`, `dlora simulate --step-log`: one JSON object per iteration) with
each other and with a CPU cost profile (`dlora simulate --cost-profile` JSON, the keys of CPUCostModel).

    python3 bench/step_log.py PROFILE.json LOG [LOG ...] [--fit OUT.json [--fit-keys KEY,KEY,...]]
    python3 bench/step_log.py PROFILE.json LOG [LOG ...] --overlap
    python3 bench/step_log.py --self-test

For every log: the iterations by kind (merged / unmerged × with prompt tokens / decode only), their mean shape,
the seconds they took (forward pass, actions, whole iteration where the log has it) and what the profile prices
them at (the same formula as CPUCostModel.stepSeconds, adapters taken as the reference q/v rank-16 size). With
--fit, a least-squares refit of the step coefficients on the first log's forward seconds is printed and written
as a profile (the input profile with those keys replaced), for `dlora simulate --cost-profile`. Only the
--fit-keys are fitted (default: fixed, per decode, per prefill token, per context token); the others keep the
profile's values and their share is taken out of the seconds first. A workload where every request carries an
adapter cannot tell per-token LoRA cost from per-token base cost, nor one adapter per client per-adapter cost
from per-sequence cost: those stay as measured by bench lora unless the log separates them. A fitted key carried by
fewer than MIN_ROWS iterations, or spanned by the keys before it, keeps the profile's value too; a cost fitted below
zero is held at 0 and the rest fitted again, except the signed terms (SIGNED).

--overlap measures cross-replica interference in served logs of several replicas (`dlora cluster --step-log`: each
iteration carries its replica's process id and its Unix start time). Each iteration's overlap is the fraction of its
wall time during which another replica was inside an iteration too. Iterations are grouped by overlap (alone:
below 10 %, together: 90 % and more), and each group's forward seconds are compared with what the profile prices
them at (which takes out the batch shapes, so far as the profile is right), and decode-only iterations of the same
mode and sequences directly. The simulator runs each replica at its profile's price whatever the others do.
"""
import argparse
import json
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


NAMES = ["fixed_seconds", "per_decode_seconds", "per_prefill_token_seconds", "per_context_token_seconds",
         "per_lora_token_seconds", "per_adapter_seconds", "merged_extra_seconds", "single_token_seconds"]
DEFAULT_FIT = NAMES[:4]
# Signed: a merged iteration's price less an unmerged one's base (CPUCostModel.mergedExtraSeconds). Where the fixed
# term takes in what the LoRA path costs an unmerged iteration beyond its per-token and per-adapter terms, a merged
# iteration, which skips that path, is cheaper than the base: the fit finds it below zero. The single-token term
# (an iteration of one decode and nothing else) is signed too: on the AVX2 machine such an iteration costs less
# than the line through batches of two and more. Together the negative ones stay above -fixed_seconds.
SIGNED = {"merged_extra_seconds", "single_token_seconds"}
MIN_ROWS = 20  # iterations a fitted term must appear in


def terms(s):
    """What each coefficient of NAMES multiplies in an iteration's price (CPUCostModel.stepSeconds)."""
    unmerged = s["mode"] == "unmerged"
    return [1.0, s["tokens"] - s["prefill_tokens"], s["prefill_tokens"], s["decode_context_tokens"],
            s["adapter_tokens"] if unmerged else 0, s["distinct_adapters"] if unmerged else 0, 0 if unmerged else 1,
            1 if s["tokens"] == 1 else 0]


def price(p, s):
    return sum(p.get(name, 0) * x for name, x in zip(NAMES, terms(s)))


def kind(s):
    return f'{s["mode"]:8} {"prompt" if s["prefill_tokens"] else "decode"}'


def summary(p, steps, name):
    print(f"\n{name}: {len(steps)} iterations")
    print("| kind | n | mean seqs | mean tokens | mean prefill | mean decode ctx | mean adapters | forward s | priced s | priced/forward | actions s | whole s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    kinds = sorted({kind(s) for s in steps}) + ["all"]
    for k in kinds:
        g = [s for s in steps if k == "all" or kind(s) == k]
        n = len(g)
        mean = lambda key: sum(s[key] for s in g) / n
        fwd = sum(s["forward_seconds"] for s in g)
        pr = sum(price(p, s) for s in g)
        act = sum(s["action_seconds"] for s in g)
        whole = sum(s["step_seconds"] for s in g) if all("step_seconds" in s for s in g) else None
        print(f"| {k} | {n} | {mean('sequences'):.1f} | {mean('tokens'):.1f} | {mean('prefill_tokens'):.1f} | "
              f"{mean('decode_context_tokens'):.0f} | {mean('distinct_adapters'):.2f} | {fwd:.3f} | {pr:.3f} | {pr / fwd:.2f} | "
              f"{act:.3f} | {'' if whole is None else f'{whole:.3f}'} |")
    switches = sum(1 for a, b in zip(steps, steps[1:]) if a["mode"] != b["mode"] or a.get("adapter") != b.get("adapter"))
    print(f"mode changes between consecutive iterations: {switches}")


def independent(rows, cols):
    """`cols` split into those linearly independent of the ones before them (Gram-Schmidt over the iterations)
    and the rest."""
    basis, kept, dropped = [], [], []
    for j in cols:
        v = [r[j] for r in rows]
        norm0 = sum(t * t for t in v) ** 0.5
        for q in basis:
            d = sum(a * b for a, b in zip(v, q))
            v = [a - d * b for a, b in zip(v, q)]
        norm = sum(t * t for t in v) ** 0.5
        if norm <= 1e-6 * norm0:
            dropped.append(j)
            continue
        basis.append([t / norm for t in v])
        kept.append(j)
    return kept, dropped


def solve(rows, ys, cols):
    """Least squares of ys on the columns `cols` of rows (normal equations, Gaussian elimination with partial
    pivoting; the columns are independent)."""
    n = len(cols)
    a = [[sum(r[cols[i]] * r[cols[j]] for r in rows) for j in range(n)] for i in range(n)]
    b = [sum(r[cols[i]] * y for r, y in zip(rows, ys)) for i in range(n)]
    for i in range(n):
        piv = max(range(i, n), key=lambda k: abs(a[k][i]))
        a[i], a[piv], b[i], b[piv] = a[piv], a[i], b[piv], b[i]
        for k in range(i + 1, n):
            f = a[k][i] / a[i][i]
            a[k] = [x - f * y for x, y in zip(a[k], a[i])]
            b[k] -= f * b[i]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (b[i] - sum(a[i][j] * x[j] for j in range(i + 1, n))) / a[i][i]
    return x


def fit(p, steps, keys, equal_processes=False):
    """Least squares of forward seconds on the profile's step terms `keys` (normal equations, no numpy needed).
    `equal_processes`: each server process's iterations (the log's `replica`, its process id) weigh as much in all
    as any other's, however many there are (weighted least squares), so a light run's many small iterations do not
    outweigh a heavy run's fewer, fuller ones."""
    names = NAMES
    unknown = set(keys) - set(names)
    if unknown:
        sys.exit(f"step_log.py: cannot fit {sorted(unknown)}: the step terms are {names}")
    rows = [terms(s) for s in steps]
    # A term that only a few iterations carry (a dLoRA trace merges seldom) cannot be fitted, nor one the others
    # already span (every iteration merged: the merged extra is the fixed term again; solved as it was, the
    # near-singular system gave ±1e12 for the pair): both keep the profile's value, as the keys not fitted do.
    counts = [sum(1 for r in rows if r[j]) for j in range(len(names))]
    for j in range(len(names)):
        if names[j] in keys and 0 < counts[j] < MIN_ROWS:
            print(f"step_log.py: {names[j]} is in {counts[j]} iterations (< {MIN_ROWS}): held at the profile's", file=sys.stderr)
    cols, dependent = independent(rows, [j for j in range(len(names)) if names[j] in keys and counts[j] >= MIN_ROWS])
    for j in dependent:
        print(f"step_log.py: {names[j]} is spanned by the terms before it on these iterations: held at the profile's",
              file=sys.stderr)
    held = [j for j in range(len(names)) if j not in cols]
    ys = [s["forward_seconds"] - sum(p.get(names[j], 0) * r[j] for j in held) for s, r in zip(steps, rows)]
    # A cost fitted below zero is noise, or a term these iterations cannot separate: it is priced as none (held at
    # 0) and the others are fitted again without it, most negative first, until none is (but the SIGNED ones).
    zeroed = []
    wrows, wys = rows, ys
    if equal_processes:
        per = {}
        for s in steps:
            per[s["replica"]] = per.get(s["replica"], 0) + 1
        w = [(len(steps) / (len(per) * per[s["replica"]])) ** 0.5 for s in steps]
        wrows = [[v * wi for v in r] for r, wi in zip(rows, w)]
        wys = [y * wi for y, wi in zip(ys, w)]
    while True:
        x = solve(wrows, wys, cols)
        negative = [(v, j) for j, v in zip(cols, x) if names[j] not in SIGNED and v < 0]
        if not negative:
            break
        v, j = min(negative)
        print(f"step_log.py: {names[j]} fitted {v:.3g} < 0: held at 0, the others fitted again", file=sys.stderr)
        zeroed.append(j)
        cols = [c for c in cols if c != j]
    n = len(cols)
    out = dict(p)
    for j in zeroed:
        out[names[j]] = 0.0
    for j, v in zip(cols, x):
        out[names[j]] = v
    for name in sorted(SIGNED):  # no iteration priced below zero (as `dlora simulate --cost-profile` checks)
        floor = -out.get("fixed_seconds", 0) - sum(min(0.0, out.get(k, 0)) for k in SIGNED if k != name)
        if out.get(name, 0) < floor:
            print(f"step_log.py: {name} {out[name]:.3g} below what fixed_seconds covers, written as {floor:.3g}", file=sys.stderr)
            out[name] = floor
    resid = [y - sum(r[cols[i]] * x[i] for i in range(n)) for r, y in zip(rows, ys)]
    rms = (sum(e * e for e in resid) / len(resid)) ** 0.5
    print("\nleast squares on the forward seconds of " + str(len(steps)) + " iterations (rms residual "
          + f"{rms * 1e3:.2f} ms; held at the profile's: {', '.join(names[j] for j in held if counts[j]) or 'none'}):")
    for j, v in zip(cols, x):
        print(f"  {names[j]}: {v:.6g} (profile: {p.get(names[j], 0):.6g})")
    for j in zeroed:
        print(f"  {names[j]}: 0 (fitted below zero; profile: {p.get(names[j], 0):.6g})")
    return out


def overlaps(steps):
    """Per iteration (in log order): the fraction of [start, start + step_seconds] during which another replica of
    the log was inside an iteration."""
    spans = {}
    for s in steps:
        spans.setdefault(s["replica"], []).append((s["start"], s["start"] + s["step_seconds"]))
    merged = {}
    for r in spans:
        # The union of the other replicas' iterations, as disjoint sorted intervals.
        others = sorted(iv for q, ivs in spans.items() if q != r for iv in ivs)
        union = []
        for a, b in others:
            if union and a <= union[-1][1]:
                union[-1][1] = max(union[-1][1], b)
            else:
                union.append([a, b])
        merged[r] = union
    result = []
    for s in steps:
        a, b = s["start"], s["start"] + s["step_seconds"]
        covered = sum(max(0.0, min(b, y) - max(a, x)) for x, y in merged[s["replica"]] if y > a and x < b)
        result.append(covered / (b - a) if b > a else 0.0)
    return result


def interference(p, steps, name):
    """Prints the overlap tables of one log; returns its (iteration, overlap) pairs (none for a log of one replica)."""
    replicas = {s.get("replica") for s in steps}
    if len(replicas) < 2 or any("start" not in s or "step_seconds" not in s for s in steps):
        print(f"\n{name}: one replica, or no start times: no overlap to measure")
        return []
    rows = list(zip(steps, overlaps(steps)))
    print(f"\n{name}: {len(steps)} iterations on {len(replicas)} replicas, mean overlap {sum(o for _, o in rows) / len(rows):.2f}")
    overlap_tables(p, rows)
    return rows


def co_run(p, pairs):
    """The simulator's interference parameters (`dlora simulate --co-run-slowdown S --co-run-baseline U`) from
    (iteration, overlap) pairs, as `interference` returns them, in the model's own terms: each iteration's forward
    seconds = k · price · (1 + S·o), o its overlap (the share of it the other replicas spent inside an iteration,
    what the simulator's b expects), fitted by least squares over every iteration (two terms, price and price·o);
    U = the overlap weighted by price (the share at which the profile's price holds). None when fewer than 20
    iterations ran alone (o < 0.1) or together (o >= 0.9)."""
    rows = [(s, o, price(p, s)) for s, o in pairs]
    if sum(o < 0.1 for _, o, _ in rows) < 20 or sum(o >= 0.9 for _, o, _ in rows) < 20:
        return None
    a11 = sum(q * q for _, _, q in rows)
    a12 = sum(q * q * o for _, o, q in rows)
    a22 = sum((q * o) ** 2 for _, o, q in rows)
    b1 = sum(q * s["forward_seconds"] for s, _, q in rows)
    b2 = sum(q * o * s["forward_seconds"] for s, o, q in rows)
    det = a11 * a22 - a12 * a12
    k, ks = (b1 * a22 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
    return {"co_run_slowdown": max(0.0, ks / k), "co_run_baseline": sum(q * o for _, o, q in rows) / sum(q for _, _, q in rows),
            "iterations": len(rows), "price_factor": k}


def overlap_tables(p, rows):
    groups = [("alone (< 10 %)", lambda o: o < 0.1), ("partly", lambda o: 0.1 <= o < 0.9), ("together (>= 90 %)", lambda o: o >= 0.9)]
    print("| overlap | n | mean seqs | forward s | priced s | forward/priced |")
    print("|---|---|---|---|---|---|")
    for label, test in groups:
        g = [s for s, o in rows if test(o)]
        if not g:
            continue
        fwd = sum(s["forward_seconds"] for s in g)
        pr = sum(price(p, s) for s in g)
        print(f"| {label} | {len(g)} | {sum(s['sequences'] for s in g) / len(g):.1f} | {fwd:.3f} | {pr:.3f} | "
              f"{'' if pr <= 0 else f'{fwd / pr:.2f}'} |")
    print("| decode-only iterations | n alone | n together | ms alone | ms together | together/alone |")
    print("|---|---|---|---|---|---|")
    shapes = sorted({(s["mode"], s["sequences"]) for s, _ in rows if s["prefill_tokens"] == 0})
    for mode, seqs in shapes:
        g = [(s, o) for s, o in rows if s["prefill_tokens"] == 0 and s["mode"] == mode and s["sequences"] == seqs]
        alone = [s["forward_seconds"] for s, o in g if o < 0.1]
        together = [s["forward_seconds"] for s, o in g if o >= 0.9]
        if len(alone) < 5 or len(together) < 5:
            continue
        ma, mt = 1e3 * sum(alone) / len(alone), 1e3 * sum(together) / len(together)
        print(f"| {mode} × {seqs} | {len(alone)} | {len(together)} | {ma:.1f} | {mt:.1f} | {mt / ma:.2f} |")


def self_test():
    """The price formula by hand, and the fit recovering known coefficients from exact synthetic iterations."""
    import contextlib, io, random
    p = {"fixed_seconds": 0.01, "per_decode_seconds": 0.004, "per_prefill_token_seconds": 0.003,
         "per_context_token_seconds": 5e-6, "per_lora_token_seconds": 1e-4, "per_adapter_seconds": 3e-4,
         "merged_extra_seconds": 0.002, "single_token_seconds": -0.003}
    s = {"mode": "unmerged", "sequences": 3, "tokens": 34, "prefill_tokens": 32, "decode_context_tokens": 100,
         "adapter_tokens": 33, "distinct_adapters": 2}
    want = 0.01 + 0.004 * 2 + 0.003 * 32 + 5e-6 * 100 + 1e-4 * 33 + 3e-4 * 2
    assert abs(price(p, s) - want) < 1e-15, (price(p, s), want)
    m = dict(s, mode="merged")
    assert abs(price(p, m) - (0.01 + 0.004 * 2 + 0.003 * 32 + 5e-6 * 100 + 0.002)) < 1e-15
    one = dict(m, sequences=1, tokens=1, prefill_tokens=0, decode_context_tokens=40)
    assert abs(price(p, one) - (0.01 + 0.004 + 5e-6 * 40 + 0.002 - 0.003)) < 1e-15
    rng = random.Random(7)
    steps = []
    for _ in range(400):
        merged = rng.random() < 0.3
        decode = rng.randrange(0, 8)
        prefill = rng.choice([0, 0, 0, rng.randrange(2, 120)])
        if decode + prefill == 0:
            decode = 1
        row = {"mode": "merged" if merged else "unmerged", "sequences": decode + (prefill > 0), "tokens": decode + prefill,
               "prefill_tokens": prefill, "decode_context_tokens": sum(rng.randrange(1, 300) for _ in range(decode)),
               "distinct_adapters": 0 if merged else rng.randrange(1, 5), "adapter_tokens": decode + prefill}
        row["forward_seconds"] = price(p, row)
        steps.append(row)
    every = DEFAULT_FIT + ["merged_extra_seconds", "single_token_seconds"]
    start = {k: (v * 3 if k in every else v) for k, v in p.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        got = fit(start, steps, every)
    for k, v in p.items():
        assert abs(got[k] - v) <= 1e-9 * max(1.0, abs(v)) + 1e-12, (k, got[k], v)
    start["single_token_seconds"] = p["single_token_seconds"]  # held at the truth below
    # A merged iteration cheaper than the unmerged base is fitted as a negative merged extra, not written as 0.
    q = dict(p, merged_extra_seconds=-0.004)
    for row in steps:
        row["forward_seconds"] = price(q, row)
    with contextlib.redirect_stdout(io.StringIO()):
        got = fit(p, steps, DEFAULT_FIT + ["merged_extra_seconds"])
    assert abs(got["merged_extra_seconds"] + 0.004) <= 1e-9, got
    # Merged in fewer than MIN_ROWS iterations: the merged extra keeps the profile's value (0 here, where the
    # iterations say -4 ms); with MIN_ROWS of them it is fitted.
    merged = [r for r in steps if r["mode"] == "merged"]
    unmerged = [r for r in steps if r["mode"] == "unmerged"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        held = fit(dict(start, merged_extra_seconds=0.0), unmerged + merged[:MIN_ROWS - 1], DEFAULT_FIT + ["merged_extra_seconds"])
        fitted = fit(dict(start, merged_extra_seconds=0.0), unmerged + merged[:MIN_ROWS], DEFAULT_FIT + ["merged_extra_seconds"])
    assert held["merged_extra_seconds"] == 0.0, held
    assert abs(fitted["merged_extra_seconds"] + 0.004) <= 1e-9, fitted
    # Every iteration merged: fixed and merged extra are one term. The merged extra keeps the profile's value and
    # the fixed term takes the rest (their sum is what the iterations say: 10 - 4 = 6 ms).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        alone = fit(dict(start, merged_extra_seconds=0.001), merged, every)
    assert alone["merged_extra_seconds"] == 0.001 and abs(alone["fixed_seconds"] - 0.005) <= 1e-9, alone
    for row in steps:
        row["forward_seconds"] = price(p, row)
    # Held keys keep the profile's value; a coefficient fitted below zero is written as 0.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        got = fit(dict(p, per_lora_token_seconds=0.001), steps, ["fixed_seconds"])
    assert got["per_lora_token_seconds"] == 0.001 and got["fixed_seconds"] == 0.0, got
    # Equal weight per process: 300 iterations of one process at fixed 10 ms and 30 of another at 20 ms (the rest the
    # truth, held): pooled, the fixed term is their mean over iterations (10.91 ms); weighted, over processes (15 ms).
    a = [dict(r, replica=1, forward_seconds=price(p, r)) for r in steps[:300]]
    b = [dict(r, replica=2, forward_seconds=price(dict(p, fixed_seconds=0.02), r)) for r in steps[300:330]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pooled = fit(p, a + b, ["fixed_seconds"])
        equal = fit(p, a + b, ["fixed_seconds"], equal_processes=True)
    assert abs(pooled["fixed_seconds"] - (300 * 0.01 + 30 * 0.02) / 330) <= 1e-12, pooled
    assert abs(equal["fixed_seconds"] - 0.015) <= 1e-12, equal
    # Overlap: replica 1's iteration [0, 1] meets replica 2's [0.5, 2] and [0.2, 0.4] (a union of 0.7 s of its
    # 1 s), replica 2's [0.5, 2] meets [0, 1] for 0.5 s of 1.5 s, and [3, 4] meets nothing.
    ol = [{"replica": 1, "start": 0.0, "step_seconds": 1.0}, {"replica": 2, "start": 0.5, "step_seconds": 1.5},
          {"replica": 2, "start": 0.2, "step_seconds": 0.2}, {"replica": 1, "start": 3.0, "step_seconds": 1.0}]
    got = overlaps(ol)
    assert all(abs(g - w) < 1e-12 for g, w in zip(got, [0.7, 0.5 / 1.5, 1.0, 0.0])), got
    # Interference in the simulator's terms: replica 1 runs [0, 1], [2, 3], [4, 5] and replica 2 [0.5, 2.5], [5, 6]
    # (overlaps 0.5, 1/3, 0.5, 0, 0). 30 shifted copies, forward seconds = 0.9 · price · (1 + 0.3·o), plus 25 more
    # iterations alone and 25 together, so both groups have 20: the fit gives k = 0.9, S = 0.3, and U the overlap
    # weighted by price.
    def it(rep, start, dur, seqs):
        return {"replica": rep, "start": start, "step_seconds": dur, "mode": "unmerged", "sequences": seqs, "tokens": seqs,
                "prefill_tokens": 0, "decode_context_tokens": 10 * seqs, "adapter_tokens": seqs, "distinct_adapters": 1}
    ol = [it(1, 0.0, 1.0, 2), it(2, 0.5, 2.0, 3), it(1, 2.0, 1.0, 1), it(1, 4.0, 1.0, 2), it(2, 5.0, 1.0, 1)]
    ol += [it(1, 10.0 + 2 * k, 1.0, 2) for k in range(25)] + [it(2, 10.0 + 2 * k, 1.0, 1) for k in range(25)]
    ol += [it(1, 100.0 + 2 * k, 1.0, 3) for k in range(25)]
    many = [dict(r, start=r["start"] + 200 * k) for k in range(30) for r in ol]
    got = overlaps(many)
    for r, o in zip(many, got):
        r["forward_seconds"] = 0.9 * price(p, r) * (1 + 0.3 * o)
    c = co_run(p, list(zip(many, got)))
    want_u = sum(price(p, r) * o for r, o in zip(many, got)) / sum(price(p, r) for r in many)
    assert abs(c["co_run_slowdown"] - 0.3) < 1e-9 and abs(c["price_factor"] - 0.9) < 1e-9, c
    assert abs(c["co_run_baseline"] - want_u) < 1e-12, (c, want_u)
    assert co_run(p, list(zip(many[:40], overlaps(many[:40])))) is None
    print("step_log.py self-test: ok")


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    ap = argparse.ArgumentParser(description="Compare step logs with a CPU cost profile; optionally refit it.")
    ap.add_argument("profile")
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--fit", metavar="OUT.json", help="write the profile refitted on the first log here (may be the input)")
    ap.add_argument("--fit-keys", default=",".join(DEFAULT_FIT), help="comma-separated step terms to fit")
    ap.add_argument("--equal-processes", action="store_true",
                    help="with --fit: weigh each server process's iterations equally in all (weighted least squares)")
    ap.add_argument("--overlap", action="store_true", help="measure cross-replica interference (logs of several replicas)")
    ap.add_argument("--co-run", metavar="OUT.json",
                    help="with --overlap: write the simulator's interference parameters measured on all the logs here")
    a = ap.parse_args(argv)
    with open(a.profile) as f:
        p = json.load(f)
    logs = [(path, load(path)) for path in a.logs]
    pooled = []
    for path, steps in logs:
        if not steps:
            sys.exit(f"step_log.py: {path} holds no iteration")
        if a.overlap:
            pooled += interference(p, steps, path)
        else:
            summary(p, steps, path)
    if a.overlap and len(logs) > 1 and pooled:
        print(f"\nall {len(logs)} logs: {len(pooled)} iterations, mean overlap {sum(o for _, o in pooled) / len(pooled):.2f}")
        overlap_tables(p, pooled)
    if a.co_run:
        if not a.overlap:
            sys.exit("step_log.py: --co-run needs --overlap")
        c = co_run(p, pooled)  # each log's overlaps, as the tables above measured them
        if c is None:
            sys.exit("step_log.py: too few iterations ran alone (overlap < 10 %) or together (>= 90 %) to measure interference")
        print(f"\nco-run: slowdown {c['co_run_slowdown']:.4f}, baseline {c['co_run_baseline']:.3f} ({c['iterations']} iterations)")
        with open(a.co_run, "w") as f:
            json.dump(c, f, indent=1)
    if a.fit:
        fitted = fit(p, logs[0][1], a.fit_keys.split(","), equal_processes=a.equal_processes)
        fitted["source"] = p.get("source", "") + f"; {a.fit_keys} refitted on {len(logs[0][1])} served iterations"
        with open(a.fit, "w") as f:
            json.dump(fitted, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
