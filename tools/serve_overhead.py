#!/usr/bin/env python3
"""Measures a serving engine's decode step at a fixed batch, client-side, for bench/simulator-validate.sh.

Sends CLIENTS concurrent streamed completions (each on its own adapter `adapter-k`, OUTPUT tokens with
ignore_eos, a short prompt), ROUNDS times. Per request, the decode time per token is (last chunk − first
chunk) / (generated tokens − 1), the tokens from the stream's usage: the served step as a client sees it
(sampling, detokenizing, the handler and, behind a router, the relay included; the prefill excluded).
Prints three numbers: the mean decode step (s), the mean time to the first token (s) and the mean prompt
tokens (the server's usage).

With PROMPT_TOKENS, each prompt is that many token ids instead (bench/simulator-validate.sh times the first token
at two prompt lengths for the prefill's cost per token).

usage: serve_overhead.py URL CLIENTS OUTPUT ROUNDS [PROMPT_TOKENS]
"""
import json, sys, threading, time, urllib.request

def main():
    if len(sys.argv) not in (5, 6):
        sys.exit("usage: serve_overhead.py URL CLIENTS OUTPUT ROUNDS [PROMPT_TOKENS]")
    url, clients, output, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    prompt_tokens = int(sys.argv[5]) if len(sys.argv) == 6 else 0
    if clients < 1 or output < 3 or rounds < 1 or prompt_tokens < 0:
        sys.exit("serve_overhead.py: CLIENTS ≥ 1, OUTPUT ≥ 3, ROUNDS ≥ 1, PROMPT_TOKENS ≥ 0")
    # Token ids 100, 101, …: ordinary entries of any Llama vocabulary of a few thousand tokens or more.
    prompt_body = list(range(100, 100 + prompt_tokens)) if prompt_tokens else "The quick brown fox"
    errors, steps = [], []
    lock = threading.Lock()

    def one(k):
        body = json.dumps({"model": f"adapter-{k}", "prompt": prompt_body, "max_tokens": output,
                           "temperature": 0, "ignore_eos": True, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        first = last = None
        tokens = prompt = None
        sent = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
                        prompt = event["usage"]["prompt_tokens"]
                    if event.get("choices"):
                        now = time.monotonic()
                        first = first or now
                        last = now
        except Exception as e:  # noqa: BLE001 — reported below; the measurement is void
            with lock:
                errors.append(str(e))
            return
        if first is None or not tokens or tokens < 3 or last <= first:
            with lock:
                errors.append(f"adapter-{k}: {tokens} tokens")
            return
        with lock:
            steps.append(((last - first) / (tokens - 1), first - sent, prompt))

    for _ in range(rounds):
        threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    if errors or not steps:
        sys.exit(f"serve_overhead.py: {len(errors)} requests failed: {errors[:1]}")
    n = len(steps)
    print(f"{sum(x[0] for x in steps) / n:.6f} {sum(x[1] for x in steps) / n:.6f} {sum(x[2] for x in steps) / n:.1f}")

if __name__ == "__main__":
    main()
