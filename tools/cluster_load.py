#!/usr/bin/env python3
"""Open-loop, trace-driven streaming load against an OpenAI completions endpoint (`dlora cluster`'s router or
one `dlora serve`), for bench/cluster.sh. Python stdlib only: raw HTTP/1.1 on asyncio streams, SSE parsed by
hand, no client library in the measured path.

Workload (seeded, deterministic; the same arguments give the same requests):
  arrivals   Azure LLM inference trace 2023 (TIMESTAMP column): the first REQUESTS inter-arrival gaps, scaled
             so that their mean is 1/RATE. --burst F divides the gaps inside a window of the run
             (--burst-start, --burst-len: fractions of the requests) by F, then the whole schedule is
             rescaled so the mean rate stays RATE: the same requests in the same makespan, bunched.
  lengths    ShareGPT {"prompt","response"} JSONL (tools/extract_sharegpt.py), taken in file order; tokens
             ≈ len(text)/4, prompts under 4 tokens dropped; the prompt TEXT is cut to MAX_PROMPT×4 chars, and
             max_tokens = min(MAX_OUTPUT, len(response)/4) with ignore_eos, so every output length is exact.
  adapters   adapter-0 … adapter-(N-1) (tools/make_bench_adapters.py's names), popularity P(k) ∝ (k+1)^-α.
Each request is sent at its arrival time whatever happened to the others (open loop), streamed
(stream_options.include_usage), temperature 0, one connection per request (Connection: close).

Per request: TTFT and end-to-end latency (both from the scheduled arrival), generated tokens (the usage
chunk, else content chunks), latency per generated token, the largest inter-chunk gap, error (non-200
status, error event, connection failure) or lost (200 but no finish_reason and [DONE] before the stream
ended or the run's --timeout). Summary: throughput = generated tokens / makespan (first arrival → last
finish), goodput = tokens of requests meeting the SLO / makespan, avg latency per token = Σ latency / Σ
tokens (dLoRA's metric), P90 latency per token, TTFT P50/P99, queueing delay ≈ TTFT P50 − --unloaded-ttft,
SLO attainment = share of all requests (failures count as misses) with latency/token ≤ --slo.

Modes:
  cluster_load.py --url URL --trace CSV --workload JSONL --requests N --rate R [...] --out JSON
  cluster_load.py --stall-probe 64,256,1024 --url URL --admin-key KEY [...] --out JSON
      one long request per prompt length (token-id prompts, exact lengths): a control run, then runs that
      ask the router (POST /admin/migrate {"request": id, "to": R, "mode": kv|recompute}) to move the
      request after --migrate-after tokens; stall = largest inter-token gap − median gap. A 404 from the
      endpoint gives "n/a".
  cluster_load.py --self-test
      starts tools/fake_openai_server.py on port 0 and checks this client's counts against it.
"""
import argparse
import asyncio
import csv
import datetime
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

# ---------------------------------------------------------------- workload


def trace_times(path, limit):
    """Arrival times (s) from the Azure trace's TIMESTAMP column, the first `limit` rows."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            stamp = row["TIMESTAMP"].strip()
            day, _, frac = stamp.partition(".")
            t = datetime.datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
            out.append(t + (float("0." + frac) if frac else 0.0))
            if len(out) >= limit:
                break
    return out


def arrivals(stamps, n, rate, burst=1.0, burst_start=0.4, burst_len=0.2):
    """n arrival offsets (s, first = 0) from the trace's gaps, mean rate `rate` (see the module doc)."""
    if len(stamps) < n:
        raise SystemExit(f"cluster_load: the trace has {len(stamps)} rows, needs {n}")
    gaps = [max(0.0, b - a) for a, b in zip(stamps, stamps[1:])][: max(0, n - 1)]
    if burst > 1 and gaps:
        lo = int(burst_start * len(gaps))
        hi = max(lo + 1, int((burst_start + burst_len) * len(gaps)))
        gaps = [g / burst if lo <= i < hi else g for i, g in enumerate(gaps)]
    mean = sum(gaps) / len(gaps) if gaps else 0
    scale = (1 / rate) / mean if mean > 0 else 0
    t, out = 0.0, [0.0]
    for g in gaps:
        t += g * scale
        out.append(t)
    return out[:n]


def conversations(path, max_prompt, max_output):
    """(prompt text, max_tokens) pairs in file order; prompts under 4 tokens (≈16 chars) dropped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                p, r = obj["prompt"], obj["response"]
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(p, str) or not isinstance(r, str) or len(p) < 16:
                continue
            out.append((p[: max_prompt * 4], max(1, min(max_output, len(r) // 4))))
    return out


def build_workload(args):
    """The request list: dicts with index, arrival, model, prompt, max_tokens."""
    stamps = trace_times(args.trace, args.requests)
    times = arrivals(stamps, args.requests, args.rate, args.burst, args.burst_start, args.burst_len)
    convs = conversations(args.workload, args.max_prompt, args.max_output)
    if not convs:
        raise SystemExit(f"cluster_load: no usable conversations in {args.workload}")
    rng = random.Random(args.seed)
    weights = [(k + 1) ** -args.alpha for k in range(args.adapters)]
    reqs = []
    for i, t in enumerate(times):
        prompt, out = convs[i % len(convs)]
        model = f"{args.adapter_prefix}{rng.choices(range(args.adapters), weights)[0]}" if args.adapters > 0 else args.base_model
        reqs.append({"index": i, "arrival": t, "model": model, "prompt": prompt, "max_tokens": out})
    return reqs


# ---------------------------------------------------------------- HTTP


class Endpoint:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme != "http":
            raise SystemExit(f"cluster_load: only http:// URLs ({url})")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.prefix = u.path.rstrip("/")
        if self.prefix.endswith("/v1"):
            self.prefix = self.prefix[:-3]


async def close_writer(writer):
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2)
    except (Exception, asyncio.CancelledError):
        pass


async def read_head(reader):
    status_line = await reader.readline()
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def body_chunks(reader, headers):
    """Yields the response body as it arrives: chunked, Content-Length or read to EOF."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                return
            left -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


def request_bytes(ep, method, path, body, api_key):
    head = f"{method} {ep.prefix}{path} HTTP/1.1\r\nHost: {ep.host}:{ep.port}\r\nConnection: close\r\n"
    if api_key:
        head += f"Authorization: Bearer {api_key}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


async def simple_call(ep, method, path, body=None, api_key=None, timeout=10.0):
    """One non-streamed call: (status, body bytes); status 0 when the connection failed."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ep.host, ep.port), timeout)
        writer.write(request_bytes(ep, method, path, body, api_key))
        await writer.drain()

        async def rest():
            status, headers = await read_head(reader)
            data = b"".join([c async for c in body_chunks(reader, headers)])
            return status, data

        return await asyncio.wait_for(rest(), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        return 0, b""
    finally:
        if writer is not None:
            await close_writer(writer)


async def stream_request(ep, api_key, payload, t_arrival, rec, on_token=None):
    """Streams one completion into `rec` (times relative to the run's clock, latency from t_arrival).
    on_token(rec) is awaited after each content chunk (the stall probe uses it)."""
    body = json.dumps(payload).encode()
    writer = None
    gaps = []
    last = None
    rec.update(status=0, error=None, lost=False, finished=False, done=False, chunks=0, usage_tokens=None, prompt_tokens=None)
    try:
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
        rec["sent"] = time.perf_counter()
        writer.write(request_bytes(ep, "POST", "/v1/completions", body, api_key))
        await writer.drain()
        status, headers = await read_head(reader)
        rec["status"] = status
        # The router names the replica it dispatched the request to (a replica serving alone sends none).
        replica = headers.get("x-dlora-replica", "")
        rec["replica"] = int(replica) if replica.isdigit() else None
        if status != 200:
            text = b"".join([c async for c in body_chunks(reader, headers)])[:300]
            rec["error"] = f"HTTP {status}: {text.decode('utf-8', 'replace')}"
            return
        buf = b""
        async for data in body_chunks(reader, headers):
            buf += data.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                payload_lines = [ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:")]
                if not payload_lines:
                    continue
                data_ = b"\n".join(payload_lines)
                if data_ == b"[DONE]":
                    rec["done"] = True
                    continue
                obj = json.loads(data_)
                if "error" in obj:
                    err = obj["error"]
                    rec["error"] = "error event: " + (err.get("message", "") if isinstance(err, dict) else str(err))
                    return
                if obj.get("id") and "id" not in rec:
                    rec["id"] = obj["id"]
                if obj.get("usage"):
                    rec["usage_tokens"] = obj["usage"].get("completion_tokens")
                    rec["prompt_tokens"] = obj["usage"].get("prompt_tokens")
                for ch in obj.get("choices") or []:
                    text = ch.get("text")
                    if text is None:
                        text = (ch.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        rec["chunks"] += 1
                        if last is None:
                            rec["first"] = now
                        else:
                            gaps.append(now - last)
                        last = now
                        if on_token is not None:
                            await on_token(rec)
                    if ch.get("finish_reason"):
                        rec["finished"] = True
                        rec["finish_reason"] = ch["finish_reason"]
            if rec["done"]:
                break
    except asyncio.CancelledError:
        rec["cancelled"] = True
        raise
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        if rec["status"] == 200:
            rec["broken"] = f"{type(e).__name__}: {e}"  # the stream broke: counted as lost below
        else:
            rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        rec["end"] = time.perf_counter()
        rec["gaps"] = gaps
        if rec["status"] == 200 and rec["error"] is None and not (rec["finished"] and rec["done"]):
            rec["lost"] = True
        if writer is not None:
            await close_writer(writer)


# ---------------------------------------------------------------- load run


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None and not math.isnan(x))
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summarize(args, reqs, recs, wall):
    ok = [r for r in recs if r.get("ok")]
    tokens = sum(r["tokens"] for r in ok)
    finishes = [r["finish_s"] for r in ok]
    makespan = max(finishes) if finishes else wall
    lat_sum = sum(r["latency_s"] for r in ok)
    lpt = [r["latency_per_token_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    met = [r for r in ok if r["latency_per_token_s"] <= args.slo]
    ttft50 = pct(ttft, 50)
    out = {
        "requests": len(reqs), "rate": args.rate, "burst": args.burst, "adapters": args.adapters, "alpha": args.alpha,
        "seed": args.seed, "max_prompt": args.max_prompt, "max_output": args.max_output, "slo_s": args.slo,
        "sent": sum(1 for r in recs if r.get("sent") is not None),
        "completed": len(ok),
        "errors": sum(1 for r in recs if r.get("error")),
        "lost": sum(1 for r in recs if r.get("lost")),
        "unsent": sum(1 for r in recs if r.get("sent") is None),
        "timed_out": wall >= args.timeout,
        "wall_s": wall, "makespan_s": makespan,
        "generated_tokens": tokens,
        "throughput_tok_s": tokens / makespan if makespan > 0 else 0.0,
        "goodput_tok_s": sum(r["tokens"] for r in met) / makespan if makespan > 0 else 0.0,
        "requests_per_s": len(ok) / makespan if makespan > 0 else 0.0,
        "avg_latency_per_token_s": lat_sum / tokens if tokens else None,
        "p90_latency_per_token_s": pct(lpt, 90),
        "p90_latency_s": pct([r["latency_s"] for r in ok], 90),
        "ttft_p50_s": ttft50, "ttft_p99_s": pct(ttft, 99),
        "queueing_delay_s": (max(0.0, ttft50 - args.unloaded_ttft) if args.unloaded_ttft is not None else ttft50) if ttft50 is not None else None,
        "max_gap_p99_s": pct([r["max_gap_s"] for r in ok if r["max_gap_s"] is not None], 99),
        "max_gap_max_s": max((r["max_gap_s"] for r in ok if r["max_gap_s"] is not None), default=None),
        "slo_attainment": len(met) / len(reqs) if reqs else 0.0,
        "send_lag_max_s": max((r["send_lag_s"] for r in recs if r.get("send_lag_s") is not None), default=None),
        "error_kinds": {},
        # Completed requests per replica the router dispatched them to (x-dlora-replica; {} without a router).
        "dispatched_to": {str(k): sum(1 for r in ok if r.get("replica") == k)
                          for k in sorted({r["replica"] for r in ok if r.get("replica") is not None})},
    }
    for r in recs:
        if r.get("error"):
            k = r["error"].split(":")[0]
            out["error_kinds"][k] = out["error_kinds"].get(k, 0) + 1
    return out


async def run_load(args, reqs):
    ep = Endpoint(args.url)
    recs = [{"index": q["index"], "model": q["model"], "arrival_s": q["arrival"], "max_tokens": q["max_tokens"],
             "prompt_chars": len(q["prompt"]) if isinstance(q["prompt"], str) else len(q["prompt"]), "sent": None} for q in reqs]
    t0 = time.perf_counter() + 0.05

    async def one(q, rec):
        delay = t0 + q["arrival"] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = {"model": q["model"], "prompt": q["prompt"], "max_tokens": q["max_tokens"], "temperature": 0,
                   "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        await stream_request(ep, args.api_key, payload, t0 + q["arrival"], rec)

    tasks = [asyncio.ensure_future(one(q, r)) for q, r in zip(reqs, recs)]
    start = time.perf_counter()
    _, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    wall = time.perf_counter() - start
    for q, r in zip(reqs, recs):
        arrival = t0 + q["arrival"]
        if r.get("sent") is not None:
            r["send_lag_s"] = r["sent"] - arrival
            if r.get("cancelled") and not r.get("error"):
                r["lost"] = True
        gaps = r.pop("gaps", [])
        r["ok"] = r.get("sent") is not None and not r.get("error") and not r.get("lost")
        first = r.pop("first", None)
        end = r.pop("end", None)
        r["ttft_s"] = first - arrival if first is not None else None
        r["max_gap_s"] = max(gaps) if gaps else None
        if r["ok"]:
            r["tokens"] = r["usage_tokens"] if r.get("usage_tokens") is not None else r["chunks"]
            r["latency_s"] = end - arrival
            r["finish_s"] = end - t0
            r["latency_per_token_s"] = r["latency_s"] / max(1, r["tokens"])
        if r.get("sent") is None:
            del r["sent"]  # never sent: counted as unsent
        else:
            r["sent"] -= t0
    return summarize(args, reqs, recs, wall), recs


# ---------------------------------------------------------------- stall probe


def metric_sum(text, name, label_filter=None):
    total = 0.0
    for m in re.finditer(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|\+Inf)\s*$", text, re.M):
        if label_filter and label_filter not in (m.group(1) or ""):
            continue
        try:
            total += float(m.group(2))
        except ValueError:
            pass
    return total


def dispatch_counts(text):
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^dlora_router_dispatch_total\{[^}]*replica="([^"]*)"[^}]*\}\s+([0-9.eE+-]+)', text, re.M)}


async def stall_probe(args):
    ep = Endpoint(args.url)
    lengths = [int(x) for x in args.stall_probe.split(",") if x.strip()]
    modes = ["none"] + [m for m in args.migrate_modes.split(",") if m]
    rng = random.Random(args.seed)
    results = []
    endpoint_missing = False
    for n in lengths:
        prompt = [rng.randrange(args.token_low, args.token_high) for _ in range(n)]
        for mode in modes:
            if mode != "none" and endpoint_missing:
                results.append({"prompt_tokens": n, "mode": mode, "admin_status": 404, "ok": True, "stall_ms": None,
                                "median_gap_ms": None, "max_gap_ms": None, "result": "n/a (endpoint 404)"})
                continue  # no migration endpoint: nothing to measure
            before = (await simple_call(ep, "GET", "/metrics", api_key=args.api_key))[1].decode("utf-8", "replace")
            state = {"asked": False, "status": None, "answer": None, "at": None}

            async def ask(rec, mode=mode, state=state, before=before):
                after = (await simple_call(ep, "GET", "/metrics", api_key=args.api_key))[1].decode("utf-8", "replace")
                b, a = dispatch_counts(before), dispatch_counts(after)
                grown = [k for k in a if a[k] > b.get(k, 0)]
                to = args.migrate_to
                if grown and grown[0].isdigit() and args.replicas > 1:
                    to = (int(grown[0]) + 1) % args.replicas  # the other replica
                state["to"] = to
                body = json.dumps({"request": rec["id"], "to": to, "mode": mode}).encode()
                state["at"] = rec["chunks"]
                state["status"], answer = await simple_call(ep, "POST", "/admin/migrate", body, args.admin_key)
                state["answer"] = answer.decode("utf-8", "replace")[:300]

            async def on_token(rec, mode=mode, state=state, ask=ask):
                # The admin call runs beside the stream, which keeps being read (its gaps stay honest).
                if mode == "none" or state["asked"] or endpoint_missing or rec["chunks"] < args.migrate_after or "id" not in rec:
                    return
                state["asked"] = True
                state["task"] = asyncio.ensure_future(ask(rec))

            rec = {}
            payload = {"model": args.base_model if args.adapters == 0 else f"{args.adapter_prefix}0", "prompt": prompt,
                       "max_tokens": args.max_output, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}
            t = time.perf_counter()
            try:
                await asyncio.wait_for(stream_request(ep, args.api_key, payload, t, rec, on_token), args.timeout)
            except asyncio.TimeoutError:
                rec["lost"] = True
            if state.get("task") is not None:
                try:
                    await asyncio.wait_for(state["task"], 15)
                except asyncio.TimeoutError:
                    state["status"] = None
            gaps = rec.get("gaps", [])
            med = statistics.median(gaps) if gaps else None
            mx = max(gaps) if gaps else None
            if state["status"] == 404:
                endpoint_missing = True
            migrated = mode != "none" and state["status"] == 200
            row = {"prompt_tokens": n, "mode": mode, "admin_status": state["status"], "admin_answer": state["answer"],
                   "to": state.get("to"), "migrate_after": state["at"], "ok": not rec.get("error") and not rec.get("lost"),
                   "error": rec.get("error"), "tokens": rec.get("usage_tokens") or rec.get("chunks"),
                   "median_gap_ms": med * 1000 if med is not None else None, "max_gap_ms": mx * 1000 if mx is not None else None,
                   "stall_ms": (mx - med) * 1000 if migrated and mx is not None else None,
                   "result": ("control" if mode == "none" else
                              "n/a (endpoint 404)" if state["status"] == 404 or endpoint_missing else
                              "migrated" if migrated else f"not migrated (status {state['status']})")}
            results.append(row)
            print(f"stall probe: {n} tokens, {mode}: {row['result']}, median gap {row['median_gap_ms']}, max gap {row['max_gap_ms']}",
                  file=sys.stderr)
    return {"stall_probe": results, "endpoint_missing": endpoint_missing}


# ---------------------------------------------------------------- self-test


def self_test():
    here = os.path.dirname(os.path.abspath(__file__))
    tmp = tempfile.mkdtemp()
    trace = os.path.join(tmp, "trace.csv")
    with open(trace, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        rng = random.Random(3)
        t = 0.0
        for _ in range(40):
            t += rng.expovariate(1.0)
            f.write(f"2023-11-16 18:{int(t // 60):02d}:{t % 60:010.7f},100,10\n")
    work = os.path.join(tmp, "work.jsonl")
    with open(work, "w") as f:
        for i in range(25):
            f.write(json.dumps({"prompt": f"question {i} " + "x" * (20 + 37 * i), "response": "y" * (4 * (3 + i))}) + "\n")
        f.write(json.dumps({"prompt": "hi", "response": "dropped: prompt under 4 tokens"}) + "\n")
    failures = []

    def check(what, cond):
        print(f"self-test: {'ok  ' if cond else 'FAIL'} {what}", file=sys.stderr)
        if not cond:
            failures.append(what)

    def start_server(*extra):
        proc = subprocess.Popen([sys.executable, os.path.join(here, "fake_openai_server.py"), "--port", "0", *extra],
                                stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            proc.kill()
            raise SystemExit(f"self-test: the fake server did not start: {line!r}")
        return proc, f"http://127.0.0.1:{m.group(1)}"

    def stop(proc):
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # 1. Arrivals: mean rate, determinism, burst keeps the mean.
    stamps = trace_times(trace, 20)
    a = arrivals(stamps, 20, 4.0)
    check("arrivals: 20 offsets, mean gap 1/rate", len(a) == 20 and abs(a[-1] / 19 - 0.25) < 1e-9)
    b = arrivals(stamps, 20, 4.0, burst=4, burst_start=0.25, burst_len=0.25)
    check("burst keeps the mean rate and compresses the window",
          abs(b[-1] - a[-1]) < 1e-9 and (b[9] - b[4]) < (a[9] - a[4]))

    # 2. A load run: every 7th request a 500, every 9th stream cut before [DONE] (fake server's counters).
    proc, url = start_server("--delay", "0.004", "--fail-every", "7", "--drop-every", "9", "--api-key", "k1")
    try:
        ns = argparse.Namespace(url=url, api_key="k1", trace=trace, workload=work, requests=20, rate=20.0, burst=1.0,
                                burst_start=0.4, burst_len=0.2, adapters=4, alpha=1.0, seed=5, max_prompt=64,
                                max_output=16, slo=0.5, timeout=30.0, unloaded_ttft=None, adapter_prefix="adapter-",
                                base_model="base")
        reqs = build_workload(ns)
        check("workload is deterministic", [(q["model"], q["max_tokens"], q["prompt"]) for q in build_workload(ns)] ==
              [(q["model"], q["max_tokens"], q["prompt"]) for q in reqs])
        check("prompts cut to max_prompt×4 chars", max(len(q["prompt"]) for q in reqs) <= 64 * 4)
        summary, recs = asyncio.run(run_load(ns, reqs))
        # The fake server numbers requests 1, 2, … in arrival order at the server: 7 and 14 fail, 9 and 18 drop.
        check(f"20 sent, 16 completed, 2 errors, 2 lost (got {summary['sent']}/{summary['completed']}/{summary['errors']}/{summary['lost']})",
              (summary["sent"], summary["completed"], summary["errors"], summary["lost"]) == (20, 16, 2, 2))
        good = [r for r in recs if r["ok"]]
        check("completed requests got exactly max_tokens tokens (usage and chunks agree)",
              all(r["tokens"] == r["max_tokens"] == r["chunks"] for r in good))
        check("generated tokens add up", summary["generated_tokens"] == sum(r["max_tokens"] for r in good))
        check("TTFT, latency/token, max gap measured", all(r["ttft_s"] > 0 and r["latency_per_token_s"] > 0 for r in good)
              and all(r["max_gap_s"] is not None for r in good if r["tokens"] > 1))
        check("each record names the replica from the router's x-dlora-replica header",
              all(r["replica"] in (0, 1) for r in good) and {r["replica"] for r in good} == {0, 1}
              and sum(summary["dispatched_to"].values()) == len(good))
        check("adapters follow the names adapter-0..3", {r["model"] for r in recs} <= {f"adapter-{k}" for k in range(4)})
        check("summary has throughput and SLO attainment", summary["throughput_tok_s"] > 0 and 0 < summary["slo_attainment"] <= 0.8)
    finally:
        stop(proc)
    proc, url = start_server("--delay", "0.004", "--api-key", "k1")
    try:
        ns.url = url
        # No key: every request is a 401 error.
        ns.api_key = None
        s2, _ = asyncio.run(run_load(ns, reqs[:3]))
        check("missing API key → 3 errors", s2["errors"] == 3 and s2["completed"] == 0)
        # The whole-run timeout bounds a slow server: requests cut are lost, not hung.
        ns.api_key, ns.timeout = "k1", 0.3
        slow = [dict(q, max_tokens=500) for q in reqs[:2]]
        t = time.perf_counter()
        s3, _ = asyncio.run(run_load(ns, slow))
        check("--timeout cuts a slow run (lost, bounded)", s3["lost"] == 2 and time.perf_counter() - t < 5)
        # Stall probe against an endpoint that answers 404.
        pa = argparse.Namespace(url=url, api_key="k1", admin_key="adm", stall_probe="8", migrate_modes="kv", seed=1,
                                token_low=100, token_high=1000, migrate_after=3, migrate_to=1, replicas=2, max_output=10,
                                adapters=0, base_model="base", adapter_prefix="adapter-", timeout=10.0)
        res = asyncio.run(stall_probe(pa))
        check("stall probe: 404 → n/a", res["endpoint_missing"] and res["stall_probe"][1]["result"].startswith("n/a"))
    finally:
        stop(proc)
    # 3. Stall probe against an endpoint that migrates (the fake server pauses the stream 0.3 s).
    proc, url = start_server("--delay", "0.01", "--migrate-stall", "0.3", "--admin-key", "adm")
    try:
        pa = argparse.Namespace(url=url, api_key=None, admin_key="adm", stall_probe="8,16", migrate_modes="kv,recompute",
                                seed=1, token_low=100, token_high=1000, migrate_after=3, migrate_to=1, replicas=2,
                                max_output=12, adapters=0, base_model="base", adapter_prefix="adapter-", timeout=10.0)
        res = asyncio.run(stall_probe(pa))
        rows = res["stall_probe"]
        check("stall probe: 6 runs (2 lengths × control, kv, recompute)", len(rows) == 6)
        check("stall probe: migrated runs see a ≈0.3 s stall, controls none",
              all(r["result"] == "migrated" and 250 < r["stall_ms"] < 1000 for r in rows if r["mode"] != "none")
              and all(r["result"] == "control" and r["max_gap_ms"] < 200 for r in rows if r["mode"] == "none"))
        # The fake server answers 400 to a move onto the request's own replica, so "migrated" already says the
        # probe found it; both targets occur (requests alternate between the two replicas).
        check("stall probe: the target is the replica the request was not on (from dispatch counters)",
              {r["to"] for r in rows if r["mode"] != "none"} == {0, 1})
    finally:
        stop(proc)
    print(f"self-test: {'PASSED' if not failures else 'FAILED: ' + '; '.join(failures)}", file=sys.stderr)
    return 0 if not failures else 1


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-test", action="store_true", help="check this client against tools/fake_openai_server.py")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="server or router base URL")
    ap.add_argument("--api-key", default=os.environ.get("DLORA_API_KEY") or None)
    ap.add_argument("--trace", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                    "azure-llm-2023", "AzureLLMInferenceTrace_conv.csv"))
    ap.add_argument("--workload", help="ShareGPT JSONL from tools/extract_sharegpt.py")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rate", type=float, default=2.0, help="mean arrival rate, requests/s")
    ap.add_argument("--burst", type=float, default=1.0, help="compress the gaps inside the burst window by this factor")
    ap.add_argument("--burst-start", type=float, default=0.4, help="burst window start, fraction of the requests")
    ap.add_argument("--burst-len", type=float, default=0.2, help="burst window length, fraction of the requests")
    ap.add_argument("--adapters", type=int, default=32, help="adapter-0..N-1; 0 sends everything to --base-model")
    ap.add_argument("--adapter-prefix", default="adapter-")
    ap.add_argument("--base-model", default="SmolLM2-135M-Instruct.Q4_1", help="served name of the base (the model file name without .gguf)")
    ap.add_argument("--alpha", type=float, default=1.0, help="adapter popularity P(k) ∝ (k+1)^-alpha")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-prompt", type=int, default=128, help="prompt tokens at most (×4 chars of text)")
    ap.add_argument("--max-output", type=int, default=32, help="generated tokens at most")
    ap.add_argument("--slo", type=float, default=0.5, help="SLO on latency per generated token, seconds")
    ap.add_argument("--unloaded-ttft", type=float, default=None, help="TTFT of an unloaded server, s (queueing delay)")
    ap.add_argument("--timeout", type=float, default=600.0, help="hard limit for the whole run, seconds")
    ap.add_argument("--out", help="write the JSON (summary + records) here")
    ap.add_argument("--stall-probe", help="comma-separated prompt lengths: run the migration stall probe instead")
    ap.add_argument("--admin-key", default=os.environ.get("DLORA_ADMIN_KEY") or None)
    ap.add_argument("--migrate-modes", default="kv,recompute")
    ap.add_argument("--migrate-after", type=int, default=16, help="tokens received before asking for the migration")
    ap.add_argument("--migrate-to", type=int, default=1, help="target replica when the metrics do not tell")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--token-low", type=int, default=1000, help="probe prompts: token ids drawn from [low, high)")
    ap.add_argument("--token-high", type=int, default=20000)
    args = ap.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if args.requests < 1 or args.rate <= 0 or args.max_prompt < 1 or args.max_output < 1 or args.timeout <= 0 or args.burst < 1:
        ap.error("--requests, --rate, --max-prompt, --max-output, --timeout must be positive, --burst ≥ 1")
    if args.stall_probe:
        result = asyncio.run(stall_probe(args))
    else:
        if not args.workload:
            ap.error("--workload is required")
        summary, recs = asyncio.run(run_load(args, build_workload(args)))
        result = dict(summary, records=recs)
        print(json.dumps(summary, indent=1), file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
