#!/usr/bin/env python3
"""A tiny fake of dlora's OpenAI streaming API, to check tools/cluster_load.py and bench/cluster.sh without the
Swift build. Not a benchmark target: it generates nothing, it only streams.

    fake_openai_server.py [--port 0] [--delay S] [--fail-every N] [--drop-every N] [--api-key K] [--admin-key K]
                          [--migrate-stall S] [--replicas R]
    fake_openai_server.py cluster --port 0 ... (other dlora cluster flags accepted and ignored)

POST /v1/completions (stream true): max_tokens text chunks `delay` seconds apart, a finish chunk, the usage
chunk when asked, [DONE]; chunked transfer encoding like the real server. Requests are numbered 1, 2, … as
they arrive: every --fail-every-th gets a 500, every --drop-every-th stream is cut after half its tokens
without a finish or [DONE]. GET /metrics: the router's series (dispatch per replica, migrations, the stall
histogram). POST /admin/migrate {"request", "to", "mode"}: 404 unless --migrate-stall is given; with it, the
named stream pauses that long once and the migration is counted. Prints `dlora: router on
http://127.0.0.1:PORT` on stderr when listening (and `dlora: serving …` in serve mode); stops on SIGTERM.
"""
import argparse
import asyncio
import json
import signal
import sys
import time


class Fake:
    def __init__(self, args):
        self.args = args
        self.count = 0
        self.dispatch = [0] * args.replicas
        self.placement = {}  # request id -> replica
        self.pause = {}  # request id -> seconds to stall at the next token
        self.migrations = {}
        self.stalls = []

    def metrics(self):
        lines = ["# TYPE dlora_router_dispatch_total counter"]
        lines += [f'dlora_router_dispatch_total{{replica="{i}"}} {n}' for i, n in enumerate(self.dispatch)]
        lines.append("# TYPE dlora_router_migrations_total counter")
        lines += [f'dlora_router_migrations_total{{mode="{m}"}} {n}' for m, n in sorted(self.migrations.items())]
        lines.append("# TYPE dlora_router_migration_stall_seconds histogram")
        for le in (0.01, 0.05, 0.1, 0.5, 1, 5):
            lines.append(f'dlora_router_migration_stall_seconds_bucket{{le="{le}"}} {sum(1 for s in self.stalls if s <= le)}')
        lines.append(f'dlora_router_migration_stall_seconds_bucket{{le="+Inf"}} {len(self.stalls)}')
        lines.append(f"dlora_router_migration_stall_seconds_sum {sum(self.stalls)}")
        lines.append(f"dlora_router_migration_stall_seconds_count {len(self.stalls)}")
        lines.append("dlora_router_redispatches_total 0")
        return "\n".join(lines) + "\n"

    async def handle(self, reader, writer):
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            auth = headers.get("authorization", "")
            if method == "GET" and path == "/metrics":
                return await self.reply(writer, 200, self.metrics(), "text/plain")
            if method == "POST" and path == "/admin/migrate":
                if self.args.migrate_stall is None:
                    return await self.reply(writer, 404, {"error": {"message": "not found"}})
                if self.args.admin_key and auth != f"Bearer {self.args.admin_key}":
                    return await self.reply(writer, 401, {"error": {"message": "admin key"}})
                req = json.loads(body)
                if req.get("request") not in self.placement:
                    return await self.reply(writer, 404, {"error": {"message": "no such request"}})
                if req.get("to") == self.placement[req["request"]]:
                    return await self.reply(writer, 400, {"error": {"message": "already there"}})
                self.pause[req["request"]] = self.args.migrate_stall
                self.placement[req["request"]] = req.get("to")
                self.migrations[req.get("mode", "kv")] = self.migrations.get(req.get("mode", "kv"), 0) + 1
                self.stalls.append(self.args.migrate_stall)
                return await self.reply(writer, 200, {"migrated": req["request"]})
            if method == "POST" and path == "/v1/completions":
                self.count += 1
                n = self.count
                if self.args.api_key and auth != f"Bearer {self.args.api_key}":
                    return await self.reply(writer, 401, {"error": {"message": "api key", "type": "invalid_request_error"}})
                if self.args.fail_every and n % self.args.fail_every == 0:
                    return await self.reply(writer, 500, {"error": {"message": "injected failure"}})
                req = json.loads(body)
                return await self.stream(writer, req, n)
            return await self.reply(writer, 404, {"error": {"message": f"{method} {path}"}})
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def reply(self, writer, status, obj, ctype="application/json"):
        data = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()

    async def stream(self, writer, req, n):
        rid = f"cmpl-{n}"
        replica = (n - 1) % self.args.replicas
        self.dispatch[replica] += 1
        self.placement[rid] = replica
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                     + f"x-dlora-replica: {replica}\r\n".encode() + b"Connection: close\r\n\r\n")

        def event(obj):
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        total = int(req.get("max_tokens", 16))
        drop = self.args.drop_every and n % self.args.drop_every == 0
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": req.get("model")}
        for i in range(total):
            if drop and i == total // 2:
                await writer.drain()
                return  # cut: no finish, no [DONE], no terminating chunk
            await asyncio.sleep(self.args.delay + self.pause.pop(rid, 0))
            writer.write(event(dict(base, choices=[{"index": 0, "text": f" t{i}", "finish_reason": None}])))
            await writer.drain()
        writer.write(event(dict(base, choices=[{"index": 0, "text": "", "finish_reason": "length"}])))
        if (req.get("stream_options") or {}).get("include_usage"):
            writer.write(event(dict(base, choices=[], usage={"prompt_tokens": 1, "completion_tokens": total, "total_tokens": total + 1})))
        writer.write(event(b"[DONE]") + b"0\r\n\r\n")
        await writer.drain()
        self.placement.pop(rid, None)


async def main():
    argv = sys.argv[1:]
    mode = "router"
    if argv and argv[0] in ("cluster", "serve"):
        mode = "serve" if argv[0] == "serve" else "router"
        argv = argv[1:]
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.005)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--drop-every", type=int, default=0)
    ap.add_argument("--api-key")
    ap.add_argument("--admin-key")
    ap.add_argument("--migrate-stall", type=float)
    ap.add_argument("--replicas", type=int, default=2)
    args, _ = ap.parse_known_args(argv)  # dlora cluster's other flags are accepted and ignored
    fake = Fake(args)
    server = await asyncio.start_server(fake.handle, "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if mode == "serve":
        print(f"dlora: serving fake (+0 adapters) on http://127.0.0.1:{port} — fake_openai_server.py", file=sys.stderr, flush=True)
    else:
        print(f"dlora: router on http://127.0.0.1:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
