#!/usr/bin/env python3
"""Open-loop, trace-driven multi-adapter client for bench/peers.sh: one workload, any OpenAI-style server.

Usage: trace_client.py --url http://127.0.0.1:PORT --system {dlora,dlorabf16,llama,peft} --tokenizer-dir DIR --gguf-file F
                       --workload sharegpt.jsonl --trace azure.csv --adapters N --rate R --requests K --out run.json

The workload is the one `dlora bench replica` builds: arrivals from the Azure LLM inference trace (its first K
inter-arrival gaps, scaled so their mean is 1/R), prompt and response lengths from ShareGPT (the prompt cut to
--max-prompt tokens and sent as token ids; max_tokens = the response's token count cut to --max-output, with
ignore_eos), and the adapter of each request drawn with power-law popularity P(k) ∝ (k+1)^-α (seeded, so every
system and rate sees the same requests in the same order). Adapter k is the model `adapter-k` on dlora and on
the PEFT server, and LoRA id k (`"lora": [{"id": k, "scale": 1.0}]`, the others at their start scale 0) on
llama-server.

Every request streams (SSE, stream_options.include_usage); the client records the arrival, the first and the
last token's times and the generated tokens. A hard deadline (last arrival + --drain seconds) bounds the run:
a request not finished by then counts as failed. Writes the per-request records and the summary as JSON.
Raw HTTP/1.1 over asyncio (no third-party client), loopback only.
"""
import argparse
import asyncio
import json
import math
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The trace reader and the raw HTTP/1.1 response readers bench/cluster.sh's client already has.
from cluster_load import body_chunks, read_head, trace_times  # noqa: E402


def trace_gaps(path, count):
    """The first `count` inter-arrival gaps (s) of the Azure trace."""
    stamps = trace_times(path, count + 1)
    if len(stamps) <= count:
        sys.exit(f"trace_client: {path} needs more than {count} rows")
    return [max(0.0, b - a) for a, b in zip(stamps, stamps[1:])]


def conversations(path, tokenizer, count, max_prompt, max_output):
    out = []
    with open(path) as f:
        for line in f:
            if len(out) >= count:
                break
            try:
                obj = json.loads(line)
                p, r = obj["prompt"], obj["response"]
            except (ValueError, KeyError, TypeError):
                continue
            if not isinstance(p, str) or not isinstance(r, str):
                continue
            ids = tokenizer(p).input_ids
            if len(ids) < 4:
                continue
            out_len = max(1, min(max_output, len(tokenizer(r, add_special_tokens=False).input_ids)))
            out.append((ids[:max_prompt], out_len))
    if len(out) < count:
        sys.exit(f"trace_client: {path} needs at least {count} usable conversations")
    return out


def build_requests(args, tokenizer):
    gaps = trace_gaps(args.trace, args.requests)
    mean = sum(gaps) / len(gaps)
    scale = (1 / args.rate) / mean if mean > 0 else 1.0
    convs = conversations(args.workload, tokenizer, args.requests, args.max_prompt, args.max_output)
    rng = random.Random(args.seed)
    weights = [(k + 1) ** -args.alpha for k in range(args.adapters)]
    reqs, t = [], 0.0
    for i, g in enumerate(gaps):
        adapter = rng.choices(range(args.adapters), weights=weights)[0]
        reqs.append({"i": i, "arrival": t, "adapter": adapter, "prompt": convs[i][0], "max_tokens": convs[i][1]})
        t += g * scale
    return reqs


def body_for(system, req):
    body = {"prompt": req["prompt"], "max_tokens": req["max_tokens"], "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    if system == "llama":
        body["model"] = "base"
        body["lora"] = [{"id": req["adapter"], "scale": 1.0}]
        # Every rate replays the same requests: without this, llama-server's slots keep each prompt's K/V from the
        # previous rate's run and match it by longest common prefix, so later runs prefill one token per request
        # (seen: 128 of 160 requests on the AVX2 machine). dlora and the PEFT server have no prefix cache.
        body["cache_prompt"] = False
    else:
        body["model"] = f"adapter-{req['adapter']}"
    return body


async def body_lines(reader, headers):
    """Yields the response body's lines (without the newline) as they arrive."""
    buf = b""
    async for data in body_chunks(reader, headers):
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
    if buf:
        yield buf


async def one_request(args, url, req, start, rec):
    delay = start + req["arrival"] - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    rec["sent"] = time.monotonic() - start
    data = json.dumps(body_for(args.system, req)).encode()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nContent-Type: application/json\r\n"
                      f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
        await writer.drain()
        status, headers = await read_head(reader)
        if status != 200:
            rest = await reader.read(2000)
            rec["error"] = f"HTTP {status}: {rest.decode(errors='replace')[:300]}"
            return
        chunks = 0
        async for raw in body_lines(reader, headers):
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            obj = json.loads(payload)
            if "error" in obj:
                rec["error"] = str(obj["error"])[:300]
                return
            now = time.monotonic() - start
            if obj.get("usage"):
                rec["usage_tokens"] = obj["usage"].get("completion_tokens")
            choices = obj.get("choices") or []
            if choices and (choices[0].get("text") or choices[0].get("finish_reason") is None):
                chunks += 1
                if "first" not in rec:
                    rec["first"] = now
                rec["last"] = now
            elif choices and "first" in rec:
                rec["last"] = max(rec["last"], now)
        rec["chunks"] = chunks
        rec["tokens"] = rec.get("usage_tokens") or chunks
        if "last" in rec:
            rec["done"] = True
    finally:
        writer.close()


def summarize(records, requests, slo, makespan):
    done = [r for r in records if r.get("done")]
    tokens = sum(r["tokens"] for r in done)
    lat = [r["last"] - r["arrival"] for r in done]
    per_token = [(r["last"] - r["arrival"]) / max(1, r["tokens"]) for r in done]
    all_lat = sorted(lat + [math.inf] * (len(records) - len(done)))
    p90 = all_lat[min(len(all_lat) - 1, int(len(all_lat) * 0.9))] if all_lat else math.inf
    ttft = sorted(r["first"] - r["arrival"] for r in done)
    return {
        "requests": requests, "completed": len(done), "failed": len(records) - len(done), "tokens": tokens,
        "makespan_s": makespan, "throughput_tok_s": tokens / makespan if makespan > 0 else 0.0,
        "throughput_req_s": len(done) / makespan if makespan > 0 else 0.0,
        "avg_latency_per_token_s": sum(lat) / tokens if tokens else None,
        "p90_latency_s": p90 if math.isfinite(p90) else None,
        "median_ttft_s": ttft[len(ttft) // 2] if ttft else None,
        "slo_attainment": sum(1 for x in per_token if x <= slo) / len(records) if records else 0.0,
    }


async def run(args):
    from transformers import AutoTokenizer  # only for token counts, as `dlora bench replica` does with its own
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir, gguf_file=args.gguf_file) if args.gguf_file \
        else AutoTokenizer.from_pretrained(args.tokenizer_dir)
    reqs = build_requests(args, tokenizer)
    url = urlparse(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("trace_client: loopback servers only")
    records = [{"i": r["i"], "arrival": r["arrival"], "adapter": r["adapter"], "prompt_tokens": len(r["prompt"]),
                "max_tokens": r["max_tokens"]} for r in reqs]
    deadline = reqs[-1]["arrival"] + args.drain
    start = time.monotonic()
    tasks = [asyncio.create_task(one_request(args, url, r, start, rec)) for r, rec in zip(reqs, records)]
    finished, pending = await asyncio.wait(tasks, timeout=deadline)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
    for t, rec in zip(tasks, records):
        if t.done() and not t.cancelled() and t.exception() is not None and "error" not in rec:
            rec["error"] = repr(t.exception())[:300]
        if not rec.get("done") and "error" not in rec:
            rec["error"] = "timeout"
    ends = [r["last"] for r in records if r.get("done")]
    makespan = deadline if len(ends) < len(records) else max(ends)
    summary = summarize(records, len(reqs), args.slo, makespan)
    summary.update({"system": args.system, "adapters": args.adapters, "rate": args.rate, "alpha": args.alpha, "slo": args.slo,
                    "deadline_s": deadline, "errors": sorted({r["error"] for r in records if "error" in r})[:5]})
    with open(args.out, "w") as f:
        json.dump({"summary": summary, "records": records}, f, indent=1)
    lpt = summary["avg_latency_per_token_s"]
    print(f"{args.system}, {args.adapters} adapters, rate {args.rate:g}: {summary['completed']}/{summary['requests']} done, "
          f"{summary['throughput_tok_s']:.1f} tok/s, SLO attainment {summary['slo_attainment'] * 100:.0f} %, "
          f"avg latency per token {'—' if lpt is None else format(lpt, '.3f')} s", flush=True)
    return summary


def main():
    p = argparse.ArgumentParser(description="trace-driven multi-adapter client (bench/peers.sh)")
    p.add_argument("--url", required=True)
    p.add_argument("--system", required=True, choices=["dlora", "dlorabf16", "llama", "peft"])
    p.add_argument("--tokenizer-dir", required=True)
    p.add_argument("--gguf-file", default="", help="tokenizer from this GGUF inside --tokenizer-dir")
    p.add_argument("--workload", required=True)
    p.add_argument("--trace", required=True)
    p.add_argument("--adapters", type=int, required=True)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-prompt", type=int, default=128)
    p.add_argument("--max-output", type=int, default=32)
    p.add_argument("--slo", type=float, default=0.1, help="latency per generated token, seconds")
    p.add_argument("--drain", type=float, default=30, help="seconds after the last arrival before unfinished requests fail")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--below", type=float, default=0.0, help="exit with status 3 when the SLO attainment is below this share")
    args = p.parse_args()
    if not (1 <= args.requests <= 10000 and args.rate > 0 and 1 <= args.adapters <= 1024 and args.slo > 0 and args.drain > 0):
        sys.exit("trace_client: bad sizes")
    summary = asyncio.run(run(args))
    # Exit status 3: SLO attainment below --below (bench/peers.sh then skips the system's higher rates).
    sys.exit(3 if summary["slo_attainment"] < args.below else 0)


if __name__ == "__main__":
    main()
