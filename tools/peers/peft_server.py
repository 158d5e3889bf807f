#!/usr/bin/env python3
"""A Hugging Face transformers + PEFT server: the dLoRA paper's PEFT baseline, for bench/peers.sh.

Usage: peft_server.py --model-dir DIR --gguf-file FILE --adapters ROOT [--port 8093] [--threads 2] [--max-batch 8]

The base model is loaded from the GGUF (transformers dequantizes it to float32); every adapter directory under
ROOT (PEFT format, the directory name is the OpenAI model name) is loaded as a named PEFT adapter. Serves an
OpenAI-compatible POST /v1/completions (prompt as a string or a list of token ids; max_tokens, ignore_eos,
stream with stream_options.include_usage; greedy decoding) plus GET /health and GET /v1/models, on 127.0.0.1.

Batching, as PEFT allows (one active adapter per forward pass): requests wait in one FIFO queue; each round
takes the adapter of the oldest waiting request, batches up to --max-batch waiting requests of that adapter
(oldest first), activates it (set_adapter) and runs `generate` on the left-padded batch to completion (request-
level batching: requests that arrive meanwhile wait for the next round; a request whose own max_tokens is
reached stops streaming while its row keeps decoding until the batch's longest request ends). ignore_eos maps to
min_new_tokens = max_new_tokens. Tokens are streamed to clients as `generate` produces them.
"""
import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import deque

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer
from peft import PeftModel


class Request:
    def __init__(self, model, prompt_ids, max_tokens, ignore_eos, loop, queue):
        self.model, self.prompt_ids, self.max_tokens, self.ignore_eos = model, prompt_ids, max_tokens, ignore_eos
        self.loop, self.queue = loop, queue  # events go to the client's asyncio queue
        self.produced = 0
        self.done = False

    def emit(self, event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class BatchStreamer(BaseStreamer):
    """Receives each decoding step's tokens (one per batch row) from `generate` and forwards them."""

    def __init__(self, batch, eos_ids):
        self.batch, self.eos_ids, self.first = batch, eos_ids, True

    def put(self, value):
        if self.first:  # the first call carries the prompt
            self.first = False
            return
        tokens = value.reshape(-1).tolist()
        for r, tok in zip(self.batch, tokens):
            if r.done:
                continue
            r.produced += 1
            finish = None
            if r.produced >= r.max_tokens:
                finish = "length"
            elif not r.ignore_eos and tok in self.eos_ids:
                finish = "stop"
            r.emit(("token", tok, finish))
            if finish:
                r.done = True

    def end(self):
        for r in self.batch:
            if not r.done:
                r.done = True
                r.emit(("token", None, "stop"))


class Engine:
    def __init__(self, args):
        torch.set_num_threads(args.threads)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf_file)
        base = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf_file, dtype=torch.float32)
        names = sorted(d for d in os.listdir(args.adapters) if os.path.isfile(os.path.join(args.adapters, d, "adapter_config.json")))
        if not names:
            sys.exit(f"peft_server: no PEFT adapters under {args.adapters}")
        model = PeftModel.from_pretrained(base, os.path.join(args.adapters, names[0]), adapter_name=names[0])
        for n in names[1:]:
            model.load_adapter(os.path.join(args.adapters, n), adapter_name=n)
        model.eval()
        self.model, self.names = model, set(names)
        self.max_batch = args.max_batch
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if eos is not None else set()
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos or 0)
        self.waiting = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.rounds = 0
        self.worker = threading.Thread(target=self.loop, daemon=True)
        self.worker.start()

    def submit(self, req):
        with self.cond:
            self.waiting.append(req)
            self.cond.notify()

    def next_batch(self):
        with self.cond:
            while not self.waiting and not self.stopping:
                self.cond.wait(timeout=1.0)
            if self.stopping:
                return None
            adapter = self.waiting[0].model
            batch = [r for r in self.waiting if r.model == adapter][: self.max_batch]
            for r in batch:
                self.waiting.remove(r)
            return batch

    def loop(self):
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            try:
                self.run(batch)
            except Exception as e:  # report to the batch's clients, keep serving
                for r in batch:
                    if not r.done:
                        r.done = True
                        r.emit(("error", str(e), None))

    @torch.inference_mode()
    def run(self, batch):
        self.rounds += 1
        self.model.set_adapter(batch[0].model)
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids):] = 1
        new = max(r.max_tokens for r in batch)
        ignore = all(r.ignore_eos for r in batch)
        self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new if ignore else 0,
                            do_sample=False, pad_token_id=self.pad, streamer=BatchStreamer(batch, self.eos_ids))


def response(status, body, content_type="application/json"):
    data = body.encode() if isinstance(body, str) else body
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    return head.encode() + data


def error(status, message):
    return response(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}))


async def handle(engine, reader, writer):
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        length = int(headers.get("content-length", "0"))
        if length > 16 << 20:
            writer.write(error("413 Payload Too Large", "body too large"))
            return
        body = await asyncio.wait_for(reader.readexactly(length), timeout=30) if length else b""
        if method == "GET" and path == "/health":
            writer.write(response("200 OK", '{"status":"ok"}'))
        elif method == "GET" and path == "/v1/models":
            data = [{"id": n, "object": "model", "owned_by": "peft"} for n in sorted(engine.names)]
            writer.write(response("200 OK", json.dumps({"object": "list", "data": data})))
        elif method == "POST" and path == "/v1/completions":
            await completions(engine, body, writer)
        else:
            writer.write(error("404 Not Found", f"no route {method} {path}"))
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        try:
            await writer.drain()
            writer.close()
        except (ConnectionError, RuntimeError):
            pass


async def completions(engine, body, writer):
    try:
        req = json.loads(body)
        model = req.get("model")
        if model not in engine.names:
            writer.write(error("404 Not Found", f"model '{model}' not found"))
            return
        prompt = req.get("prompt")
        if isinstance(prompt, str):
            ids = engine.tokenizer(prompt).input_ids
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt):
            ids = prompt
        else:
            writer.write(error("400 Bad Request", "'prompt' must be a string or a list of token ids"))
            return
        max_tokens = int(req.get("max_tokens") or 16)
        if max_tokens < 1 or max_tokens > 4096:
            writer.write(error("400 Bad Request", "max_tokens out of range"))
            return
        stream = bool(req.get("stream", False))
        usage_wanted = bool((req.get("stream_options") or {}).get("include_usage", False))
        ignore_eos = bool(req.get("ignore_eos", False))
    except (ValueError, TypeError, AttributeError) as e:
        writer.write(error("400 Bad Request", f"bad request: {e}"))
        return
    queue = asyncio.Queue()
    r = Request(model, list(ids), max_tokens, ignore_eos, asyncio.get_running_loop(), queue)
    engine.submit(r)
    rid, created = f"cmpl-{id(r):x}", int(time.time())

    def chunk(text, finish):
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]}

    tokens, finish = [], None
    if stream:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")
    while finish is None:
        kind, tok, fin = await queue.get()
        if kind == "error":
            if stream:
                writer.write(f"data: {json.dumps({'error': {'message': tok}})}\n\n".encode())
            else:
                writer.write(error("500 Internal Server Error", tok))
            return
        finish = fin
        if tok is not None:
            tokens.append(tok)
            if stream:
                writer.write(f"data: {json.dumps(chunk(engine.tokenizer.decode([tok]), finish))}\n\n".encode())
                await writer.drain()
        elif stream:
            writer.write(f"data: {json.dumps(chunk('', finish))}\n\n".encode())
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)}
    if stream:
        if usage_wanted:
            writer.write(f"data: {json.dumps({'id': rid, 'object': 'text_completion', 'created': created, 'model': model, 'choices': [], 'usage': usage})}\n\n".encode())
        writer.write(b"data: [DONE]\n\n")
    else:
        out = chunk(engine.tokenizer.decode(tokens, skip_special_tokens=True), finish)
        out["usage"] = usage
        writer.write(response("200 OK", json.dumps(out)))


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="directory holding the GGUF")
    p.add_argument("--gguf-file", required=True, help="GGUF file name inside --model-dir")
    p.add_argument("--adapters", required=True, help="root of PEFT adapter directories")
    p.add_argument("--port", type=int, default=8093)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8, help="most requests of one adapter per generate call")
    args = p.parse_args()
    engine = Engine(args)
    server = await asyncio.start_server(lambda r, w: handle(engine, r, w), "127.0.0.1", args.port)
    print(f"peft_server: {len(engine.names)} adapters, listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
