#!/usr/bin/env python3
"""A bounded streaming load run against `dlora serve` (OpenAI chat completions over SSE, raw HTTP/1.1 on
asyncio streams: no client library in the measured path).

Usage: load_client.py --port P --pid PID --clients 64 --adapters a,b,… --seconds 120 --max-tokens 32 --out JSON
Every client loops: one streamed chat request at a time, adapters round-robin, prompts from a fixed list.
A request counts as an error on any non-200 status or error event, as lost when its stream ends without a
finish reason and [DONE]. Resident memory of PID is sampled once a second.
"""
import argparse
import asyncio
import json
import statistics
import time

PROMPTS = [
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is the capital of France? Answer briefly.",
    "Give me three tips for writing clean code.",
    "Summarize the plot of a heist movie in two sentences.",
    "List four prime numbers and explain what makes them prime.",
    "Describe a cat to someone who has never seen one.",
    "How do I boil an egg?",
]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def one_request(port, model, prompt, max_tokens, stats):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0.7, "stream": True, "stream_options": {"include_usage": True}}).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        chunked = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if status != 200:
            stats["errors"] += 1
            stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
            return
        buf = b""
        first = last = None
        gaps = []
        finished = done = False
        tokens = 0
        while not done:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    break
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                buf += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                payload = event[6:]
                if payload == b"[DONE]":
                    done = True
                    break
                obj = json.loads(payload)
                if "error" in obj:
                    stats["errors"] += 1
                    return
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
                for ch in obj.get("choices", []):
                    if ch.get("delta", {}).get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        else:
                            gaps.append(now - last)
                        last = now
                    if ch.get("finish_reason"):
                        finished = True
        if not (finished and done):
            stats["lost"] += 1
            return
        stats["ok"] += 1
        stats["tokens"] += tokens
        if first is not None:
            stats["ttft"].append(first - start)
        stats["itl"].extend(gaps)
        stats["e2e"].append(time.perf_counter() - start)
    except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        stats["errors"] += 1
        stats["statuses"][type(e).__name__] = stats["statuses"].get(type(e).__name__, 0) + 1
    finally:
        writer.close()


async def client(i, args, adapters, stats, stop_at):
    k = i
    while time.perf_counter() < stop_at:
        model = adapters[k % len(adapters)]
        prompt = PROMPTS[(k * 7 + i) % len(PROMPTS)]
        k += 1
        stats["sent"] += 1
        await one_request(args.port, model, prompt, args.max_tokens, stats)


async def sample_rss(pid, samples, stop_at):
    t0 = time.perf_counter()
    while time.perf_counter() < stop_at:
        samples.append((round(time.perf_counter() - t0, 1), rss_kib(pid)))
        await asyncio.sleep(1)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    adapters = args.adapters.split(",")
    stats = {"sent": 0, "ok": 0, "errors": 0, "lost": 0, "tokens": 0, "ttft": [], "itl": [], "e2e": [], "statuses": {}}
    samples = []
    start = time.perf_counter()
    stop_at = start + args.seconds
    await asyncio.gather(sample_rss(args.pid, samples, stop_at),
                         *(client(i, args, adapters, stats, stop_at) for i in range(args.clients)))
    elapsed = time.perf_counter() - start
    rss = [kib for _, kib in samples]
    half = len(rss) // 2
    result = {
        "clients": args.clients, "adapters": len(adapters), "seconds": round(elapsed, 1), "max_tokens": args.max_tokens,
        "sent": stats["sent"], "ok": stats["ok"], "errors": stats["errors"], "lost": stats["lost"],
        "statuses": {str(k): v for k, v in stats["statuses"].items()},
        "requests_per_s": stats["ok"] / elapsed, "tokens_per_s": stats["tokens"] / elapsed,
        "ttft_p50_s": pct(stats["ttft"], 50), "ttft_p99_s": pct(stats["ttft"], 99),
        "itl_p50_s": pct(stats["itl"], 50), "itl_p99_s": pct(stats["itl"], 99),
        "e2e_p50_s": pct(stats["e2e"], 50), "e2e_p99_s": pct(stats["e2e"], 99),
        "rss_start_mib": rss[0] / 1024 if rss else 0, "rss_end_mib": rss[-1] / 1024 if rss else 0,
        "rss_max_mib": max(rss) / 1024 if rss else 0,
        "rss_first_half_mean_mib": statistics.mean(rss[:half]) / 1024 if half else 0,
        "rss_second_half_mean_mib": statistics.mean(rss[half:]) / 1024 if half else 0,
        "rss_samples": samples,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
