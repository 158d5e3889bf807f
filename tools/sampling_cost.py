#!/usr/bin/env python3
"""What sampling options cost on a running server, one request at a time (bench/sampling.sh).

Decode variants stream OUTPUT greedy tokens (ignore_eos; a structured output may end sooner, when its grammar is
complete) from a short prompt; a decode step is (last chunk −
first chunk) / (tokens − 1), client-side. Prefill variants time a whole request of PROMPT token ids with
max_tokens 1: plain, and with echo + logprobs (every prompt position scored). Each round runs every variant
once, in a rotated order; ratios are to the plain variant of the same kind in the same round.

usage: sampling_cost.py URL MODEL OUTPUT PROMPT ROUNDS OUT.md
"""
import json, statistics, sys, time, urllib.request

DECODE = [
    ("plain", {}),
    ("logprobs 5", {"logprobs": 5}),
    ("logprobs 20", {"logprobs": 20}),
    ("penalties + bias", {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1,
                          "logit_bias": {str(i): -5 for i in range(100, 150)}}),
    ("json_object", {"response_format": {"type": "json_object"}}),
    # Structured outputs: the same schema every round (its automaton and masks kept from earlier requests), and a
    # schema no request used before (every state's mask computed on first use: the cold cost).
    ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {"name": "list", "schema": {
        "type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}}, "required": ["items"]}}}}),
    ("json_schema, new schema", None),
]


def fresh_schema(nonce):
    """A schema no earlier request used (a property name of its own), of the same shape as json_schema's."""
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "list", "schema": {
        "type": "object", "properties": {f"items{nonce}": {"type": "array", "items": {"type": "string"}}},
        "required": [f"items{nonce}"]}}}}
PREFILL = [("plain", {}), ("echo + logprobs 5", {"echo": True, "logprobs": 5})]


def post(url, body, stream):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as r:
        if not stream:
            r.read()
            return time.monotonic() - t0, []
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("data: {") and '"text"' in line:
                stamps.append(time.monotonic())
    return time.monotonic() - t0, stamps


def main():
    url, model, output, prompt, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    decode = {name: [] for name, _ in DECODE}
    tokens = {name: [] for name, _ in DECODE}
    prefill = {name: [] for name, _ in PREFILL}
    ratio_d = {name: [] for name, _ in DECODE}
    ratio_p = {name: [] for name, _ in PREFILL}
    ids = list(range(100, 100 + prompt))
    post(url, {"model": model, "prompt": "warm up", "max_tokens": 8}, False)
    for r in range(rounds):
        this_d, this_p = {}, {}
        order = DECODE[r % len(DECODE):] + DECODE[:r % len(DECODE)]
        for name, extra in order:
            if extra is None:
                extra = fresh_schema(f"{r}x{time.monotonic_ns() % 100000}")
            _, stamps = post(url, {"model": model, "prompt": "The quick brown fox", "max_tokens": output, "temperature": 0,
                                   "ignore_eos": True, "stream": True, **extra}, True)
            step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
            tokens[name].append(len(stamps))
            this_d[name] = step
            decode[name].append(step)
        order = PREFILL[r % len(PREFILL):] + PREFILL[:r % len(PREFILL)]
        for name, extra in order:
            total, _ = post(url, {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0, **extra}, False)
            this_p[name] = total
            prefill[name].append(total)
        for name in decode:
            ratio_d[name].append(this_d[name] / this_d["plain"])
        for name in prefill:
            ratio_p[name].append(this_p[name] / this_p["plain"])

    def cell(xs, scale, fmt):
        return f"{fmt.format(statistics.median(xs) * scale)} ({fmt.format(min(xs) * scale)}–{fmt.format(max(xs) * scale)})"

    lines = [f"Decode, one stream, {output} greedy tokens: median (range) over {rounds} rotated rounds.", "",
             "| variant | tokens | ms per token | × plain (same round) |", "|---|---:|---:|---:|"]
    for name, _ in DECODE:
        lines.append(f"| {name} | {statistics.median(tokens[name]):.0f} | {cell(decode[name], 1e3, '{:.2f}')} | {cell(ratio_d[name], 1, '{:.3f}')} |")
    lines += ["", f"Prefill of {prompt} prompt tokens and one generated token: whole request.", "",
              "| variant | ms | × plain (same round) |", "|---|---:|---:|"]
    for name, _ in PREFILL:
        lines.append(f"| {name} | {cell(prefill[name], 1e3, '{:.1f}')} | {cell(ratio_p[name], 1, '{:.3f}')} |")
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
