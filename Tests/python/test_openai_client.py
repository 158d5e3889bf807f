#!/usr/bin/env python3
"""The official `openai` Python client drives a running `dlora serve` process on loopback — or, with --cluster,
a `dlora cluster` (two replicas behind the router), which must answer the same API the same way.

Usage: test_openai_client.py DLORA_BINARY [--cluster]
Starts the server on the tiny test model with its adapters (port 0, an API key), checks completions, chat,
streaming, the models list, an adapter request, an unknown model and a bad key, reads /metrics with
prometheus_client's parser (the vLLM-named series inference routers scrape), then stops it with SIGTERM
and checks that it exits cleanly. Exits non-zero on the first failure.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import json
import urllib.error
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "Tests/Fixtures/models/tiny-llama/tiny-llama.F32.gguf")
ADAPTERS = os.path.join(ROOT, "Tests/Fixtures/lora/tiny-llama")
KEY = "sk-dlora-test"


def start(binary, cluster, model=MODEL, name="tiny-llama", shutdown_deadline=5):
    serve_flags = ["--kv-cache-mb", "64", "--shutdown-deadline", str(shutdown_deadline), "--served-model-name", name]
    if cluster:
        command = [binary, "cluster", "--replicas", "2", "--threads", "2", "--model", model, "--adapters", ADAPTERS, "--port", "0",
                   "--api-key", KEY, "--admin-key", "admin-test", "--"] + serve_flags
        ready = r"router on http://127\.0\.0\.1:(\d+)"
    else:
        command = [binary, "serve", "--model", model, "--adapters", ADAPTERS, "--port", "0", "--api-key", KEY] + serve_flags
        ready = r"serving .* on http://127\.0\.0\.1:(\d+)"
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port = None
    deadline = time.time() + 60
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(ready, line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        sys.exit(f"{command[1]} did not start:\n" + "".join(lines))
    # Keep draining stderr so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, port


def check_tokenize(client, port):
    """vLLM's /tokenize and /detokenize (on the replica, or answered by one through the router): a prompt's tokens are
    the ones a completion counts, and they decode back to the text."""
    def post(path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    c = client.completions.create(model="smol", prompt="Tokens, counted twice.", max_tokens=1)
    t = post("/tokenize", {"model": "smol", "prompt": "Tokens, counted twice."})
    assert t["count"] == len(t["tokens"]) == c.usage.prompt_tokens and t["max_model_len"] > 0, (t, c.usage)
    bare = post("/tokenize", {"prompt": "Tokens, counted twice.", "add_special_tokens": False})
    assert post("/detokenize", {"tokens": bare["tokens"]})["prompt"] == "Tokens, counted twice.", bare
    try:
        post("/detokenize", {"tokens": [-1]})
        raise AssertionError("accepted a negative token id")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and json.loads(e.read())["error"]["param"] == "tokens", e


def check_metrics(port):
    """The model-server protocol's series, as the Prometheus project's own parser reads them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:gpu_cache_usage_perc", "vllm:cache_config_info", "vllm:lora_requests_info"]:
        assert name in families and families[name].type == "gauge" and len(families[name].samples) == 1, (name, families.get(name))
    value = {name: families[name].samples[0] for name in families if name.startswith("vllm:")}
    assert value["vllm:num_requests_running"].value == 0 and value["vllm:num_requests_waiting"].value == 0, value
    usage = value["vllm:kv_cache_usage_perc"].value
    # Idle: the resident adapters' blocks are evictable on demand, so a router sees no usage; dlora's own occupancy
    # gauge counts them.
    assert usage == 0 and value["vllm:gpu_cache_usage_perc"].value == usage, usage
    occupancy = families["dlora_kv_cache_usage_ratio"].samples[0].value
    assert 0 < occupancy <= 1, occupancy
    cache = value["vllm:cache_config_info"]
    assert cache.value == 1 and cache.labels["block_size"] == "16" and int(cache.labels["num_gpu_blocks"]) > 0, cache
    assert cache.labels["cache_dtype"] in ("f16", "f32"), cache
    lora = value["vllm:lora_requests_info"]
    assert abs(lora.value - time.time()) < 10, lora
    assert int(lora.labels["max_lora"]) >= 1, lora
    # a-qv-r4, b-all-r8-rslora and the mole-abc composition ran above and stay resident (64 MiB holds them).
    assert set(lora.labels["running_lora_adapters"].split(",")) == {"a-qv-r4", "b-all-r8-rslora", "mole-abc"}, lora
    assert lora.labels["waiting_lora_adapters"] == "", lora


def check_router_metrics(port):
    """The router's own series, as the Prometheus project's own parser reads them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = [s for s in families["dlora_router_replica_up"].samples]
    assert len(up) == 2 and all(s.value == 1 for s in up), up
    dispatched = sum(s.value for s in families["dlora_router_dispatch"].samples)
    assert dispatched >= 5, dispatched  # the five generations that reached a replica
    assert families["dlora_router_migration_stall_seconds"].type == "histogram"


def replica_pids(proc_pid):
    out = subprocess.run(["pgrep", "-P", str(proc_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def outside_strings(text):
    """The characters of JSON text that are not inside a string (escapes skipped)."""
    out, i, inside = [], 0, False
    while i < len(text):
        c = text[i]
        if inside and c == "\\":
            i += 2
            continue
        if c == '"':
            inside = not inside
        elif not inside:
            out.append(c)
        i += 1
    return "".join(out)


def kill_all(proc, pids):
    """Stops a server process that is still running, and the replica processes it started, by PID."""
    if proc.poll() is None:
        proc.kill()
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time"}}]


def check_tools(binary, cluster):
    """Tool calls as the SDK sends and reads them, on the default model (the functions go into the prompt: more than
    the tiny model's 256-token context): a named function, "required", streamed, and the calls sent back as history.
    Arguments are checked with jsonschema against each function's parameters."""
    import json as _json
    import jsonschema
    smol = subprocess.run([os.path.join(ROOT, "scripts/fetch-model.sh")], capture_output=True, text=True, check=True).stdout.strip()
    proc, port = start(binary, cluster, model=smol, name="smol")
    children = replica_pids(proc.pid) if cluster else []
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        named = client.chat.completions.create(model="smol", messages=messages, tools=TOOLS, max_tokens=80, temperature=0,
                                               tool_choice={"type": "function", "function": {"name": "get_weather"}})
        call = named.choices[0].message.tool_calls[0]
        assert named.choices[0].finish_reason == "stop" and call.function.name == "get_weather", named
        jsonschema.validate(_json.loads(call.function.arguments), WEATHER)
        for parallel in (True, False):
            required = client.chat.completions.create(model="smol", messages=messages, tools=TOOLS, max_tokens=100, temperature=0.7, seed=4,
                                                      tool_choice="required", parallel_tool_calls=parallel)
            calls = required.choices[0].message.tool_calls
            assert required.choices[0].finish_reason == "tool_calls" and calls and (parallel or len(calls) == 1), required
            for c in calls:
                args = _json.loads(c.function.arguments)
                jsonschema.validate(args, WEATHER if c.function.name == "get_weather" else {"type": "object", "maxProperties": 0})
        stream = client.chat.completions.create(model="smol", messages=messages, tools=TOOLS, max_tokens=80, temperature=0, stream=True,
                                                tool_choice={"type": "function", "function": {"name": "get_weather"}})
        deltas = [d for ch in stream if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
        # The call named in its first piece (id, name), then its arguments in pieces adding up to the whole answer's.
        assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather" and all(d.id is None for d in deltas[1:]), deltas
        assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments and all(d.index == 0 for d in deltas), deltas
        # The answer and the tool's result back as history (the SDK's own message object).
        history = messages + [named.choices[0].message.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}]
        after = client.chat.completions.create(model="smol", messages=history, max_tokens=20, temperature=0)
        assert after.choices[0].message.content, after
        # auto (the default with tools), after one example exchange: a call for a weather question, text for a greeting,
        # the same streamed (text as it comes, a call named once then its arguments in pieces).
        shot = history + [{"role": "assistant", "content": "It is 18 degrees and sunny in Paris."}]
        for question, calls in [("What is the weather in Rome?", True), ("Hi! Who are you?", False)]:
            ask = shot + [{"role": "user", "content": question}]
            a = client.chat.completions.create(model="smol", messages=ask, tools=TOOLS, max_tokens=60, temperature=0)
            m = a.choices[0].message
            if calls:
                assert a.choices[0].finish_reason == "tool_calls" and m.content is None and m.tool_calls, a
                for c in m.tool_calls:
                    assert c.function.name in ("get_weather", "get_time"), a
                    if c.function.name == "get_weather":
                        jsonschema.validate(_json.loads(c.function.arguments), WEATHER)
            else:
                assert m.tool_calls is None and m.content and not m.content.startswith("<tool_call>"), a
            st = list(client.chat.completions.create(model="smol", messages=ask, tools=TOOLS, max_tokens=60, temperature=0, stream=True))
            text = "".join(ch.choices[0].delta.content or "" for ch in st if ch.choices)
            names = [d.function.name for ch in st if ch.choices for d in (ch.choices[0].delta.tool_calls or []) if d.id]
            assert text == (m.content or "") and names == [c.function.name for c in (m.tool_calls or [])], (st, a)
        check_responses(client)
        check_tokenize(client, port)
        # The stored answers in the metrics of whoever keeps them (the router in a cluster).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        stored = "dlora_router_responses_stored" if cluster else "dlora_responses_stored"
        assert families[stored].samples[0].value >= 1, families.get(stored)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        kill_all(proc, children)


def check_second_signal(binary, cluster):
    """A second SIGTERM while the first one's drain waits for a long stream: the server cancels it and exits within
    seconds with status 1 (the cluster: its replicas killed, none left), instead of waiting out the drain deadline."""
    smol = subprocess.run([os.path.join(ROOT, "scripts/fetch-model.sh")], capture_output=True, text=True, check=True).stdout.strip()
    proc, port = start(binary, cluster, model=smol, name="smol", shutdown_deadline=300)
    children = replica_pids(proc.pid) if cluster else []
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
        started, ended, failures = threading.Event(), threading.Event(), []

        def read():
            try:
                for _ in client.completions.create(model="smol", prompt="Once upon a time", max_tokens=2000, temperature=0,
                                                   stream=True, extra_body={"ignore_eos": True}):
                    started.set()
            except Exception as e:
                failures.append(e)
            ended.set()
        threading.Thread(target=read, daemon=True).start()
        assert started.wait(60), f"the long stream never started: {failures}"
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None and not ended.is_set(), "the first SIGTERM must wait for the stream (drain)"
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
        assert rc == 1, f"exit status {rc} after a second SIGTERM"
        assert time.time() - t0 < 10, f"{time.time() - t0:.1f} s from the second SIGTERM to the exit"
        assert ended.wait(5), "the stream did not end"
        if cluster:
            time.sleep(0.2)
            alive = [p for p in children if os.path.exists(f"/proc/{p}") and "zombie" not in open(f"/proc/{p}/status").read()]
            assert not alive, f"replicas still running after a second SIGTERM: {alive}"
    finally:
        if proc.poll() is None:
            kill_all(proc, children)


def check_responses(client):
    """The Responses API (`client.responses`) as the SDK sends and reads it: the same greedy answer as the chat request
    it stands for (instructions as the system message), whole and streamed (the events in OpenAI's order, numbered, the
    deltas adding up to the final text), `max_output_tokens` ending it incomplete, function tools (a call, streamed, and
    sent back as function_call / function_call_output items), `text.format` through `responses.parse`, and refusals
    that name the Responses parameter."""
    import json as _json
    import jsonschema
    from typing import Annotated
    from pydantic import BaseModel, Field
    chat = client.chat.completions.create(model="smol", max_tokens=24, temperature=0,
                                          messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a fruit."}])
    r = client.responses.create(model="smol", instructions="Answer briefly.", input="Name a fruit.", max_output_tokens=24, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.output[0].type == "message", r
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)
    assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == chat.usage.completion_tokens, (r.usage, chat.usage)
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed"), r
    events = list(client.responses.create(model="smol", instructions="Answer briefly.", input=[{"role": "user", "content": "Name a fruit."}],
                                          max_output_tokens=24, temperature=0, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"], types
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"], types
    assert types[-1] == ("response.incomplete" if r.status == "incomplete" else "response.completed"), types
    assert [e.sequence_number for e in events] == list(range(len(events))), events
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == r.output_text == events[-1].response.output_text, (deltas, r.output_text)
    short = client.responses.create(model="smol", input="Tell me a long story.", max_output_tokens=3, temperature=0)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens" and short.usage.output_tokens == 3, short
    # Function tools: a call, the same streamed, then the call and its output sent back.
    tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
              **({"parameters": t["function"]["parameters"]} if "parameters" in t["function"] else {})} for t in TOOLS]
    ask = "What is the weather in Paris?"
    called = client.responses.create(model="smol", input=ask, tools=tools, tool_choice="required", parallel_tool_calls=False,
                                     max_output_tokens=100, temperature=0)
    assert [o.type for o in called.output] == ["function_call"] and called.output[0].call_id.startswith("call_"), called
    call = called.output[0]
    jsonschema.validate(_json.loads(call.arguments), WEATHER if call.name == "get_weather" else {"type": "object", "maxProperties": 0})
    streamed = list(client.responses.create(model="smol", input=ask, tools=tools, tool_choice="required", parallel_tool_calls=False,
                                            max_output_tokens=100, temperature=0, stream=True))
    done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
    final = streamed[-1].response.output
    assert len(done) == 1 and done[0].arguments == call.arguments and final[0].arguments == call.arguments, streamed
    pieces = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert pieces == call.arguments, (pieces, call.arguments)
    assert streamed[2].item.call_id == final[0].call_id and done[0].item_id == final[0].id, streamed
    history = [{"role": "user", "content": ask}, {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"}]
    after = client.responses.create(model="smol", input=history, tools=tools, tool_choice="none", max_output_tokens=20, temperature=0)
    same = client.chat.completions.create(model="smol", max_tokens=20, temperature=0, tools=TOOLS, tool_choice="none", messages=[
        {"role": "user", "content": ask},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "18 degrees and sunny"}])
    assert after.output_text == same.choices[0].message.content, (after, same)

    class City(BaseModel):
        name: str
        population: Annotated[int, Field(ge=0, multiple_of=1000)]
    parsed = client.responses.parse(model="smol", input="Describe a city.", text_format=City, max_output_tokens=80, temperature=0)
    assert isinstance(parsed.output_parsed, City), parsed
    assert parsed.output_parsed.population >= 0 and parsed.output_parsed.population % 1000 == 0, parsed.output_parsed

    # Pydantic's sets of literals (uniqueItems over an enum) and property counts, as the SDK sends them.
    from typing import Literal
    class Palette(BaseModel):
        colors: Annotated[set[Literal["red", "green", "blue"]], Field(min_length=1)]
        notes: Annotated[dict[str, bool], Field(max_length=2)]
    schema = Palette.model_json_schema()
    assert schema["properties"]["colors"]["uniqueItems"] is True and schema["properties"]["notes"]["maxProperties"] == 2, schema
    finished = 0
    for seed in range(4):
        palette = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Pick colors."}], max_tokens=80, temperature=0.8,
                                                 seed=seed, response_format={"type": "json_schema", "json_schema": {"name": "palette", "schema": schema}})
        if palette.choices[0].finish_reason == "stop":
            finished += 1
            value = _json.loads(palette.choices[0].message.content)
            jsonschema.validate(value, schema)
            Palette.model_validate(value)
    assert finished >= 2, f"only {finished} of 4 palettes finished"
    # Stored responses (the replica keeps them; through the router, the router does): retrieved as answered, continued
    # by previous_response_id with the same prompt as the conversation sent whole, listed, deleted.
    first = client.responses.create(model="smol", instructions="Answer briefly.", input="Name a fruit.", max_output_tokens=12, temperature=0)
    assert first.store is True and client.responses.retrieve(first.id).output_text == first.output_text, first
    follow = client.responses.create(model="smol", previous_response_id=first.id, input="Another one?", max_output_tokens=12, temperature=0)
    sent_whole = client.responses.create(model="smol", store=False, max_output_tokens=12, temperature=0, input=[
        {"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": first.output_text}, {"role": "user", "content": "Another one?"}])
    assert follow.previous_response_id == first.id and follow.usage.input_tokens == sent_whole.usage.input_tokens, (follow, sent_whole)
    assert follow.output_text == sent_whole.output_text, (follow.output_text, sent_whole.output_text)
    items = client.responses.input_items.list(follow.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "Another one?", items
    client.responses.delete(first.id)
    for gone in (first.id, sent_whole.id):
        try:
            client.responses.retrieve(gone)
            raise AssertionError(f"{gone} still stored")
        except openai.NotFoundError as e:
            assert e.status_code == 404, e
    for bad, param in [({"max_output_tokens": 0}, "max_output_tokens"), ({"previous_response_id": "resp_1"}, "previous_response_id"),
                       ({"tools": [{"type": "web_search"}]}, "tools[0].type"), ({"extra_body": {"best_of": 2}}, "best_of")]:
        try:
            client.responses.create(model="smol", input="hi", **bad)
            raise AssertionError(f"accepted {bad}")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == param, (bad, e.body)


def main():
    binary = sys.argv[1]
    cluster = "--cluster" in sys.argv[2:]
    check_tools(binary, cluster)
    check_second_signal(binary, cluster)
    proc, port = start(binary, cluster)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)

        ids = sorted(m.id for m in client.models.list().data)
        assert ids == ["a-qv-r4", "b-all-r8-rslora", "c-kod-r2", "e-all-r4", "f-pattern", "mix-cat", "mix-dare-linear", "mix-dare-ties",
                       "mix-linear", "mix-ties", "mole-abc", "mole-abc-layer", "mole-abc-net", "mole-ac-matrix", "tiny-llama"], ids
        parents = {m.id: getattr(m, "parent", None) for m in client.models.list().data}
        assert parents["a-qv-r4"] == "tiny-llama" and parents["tiny-llama"] is None, parents
        m = client.models.retrieve("a-qv-r4")
        assert m.id == "a-qv-r4" and getattr(m, "parent", None) == "tiny-llama", m
        try:
            client.models.retrieve("no-such-model")
            raise AssertionError("an unknown model was retrieved")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body

        # A conversation as the SDK builds it: the previous answer's message object appended as it came.
        first = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=3, temperature=0)
        history = [{"role": "user", "content": "hi"}, first.choices[0].message, {"role": "user", "content": "and?"}]
        second = client.chat.completions.create(model="tiny-llama", messages=history, max_tokens=3, temperature=0,
                                                service_tier="auto")
        assert second.choices[0].message.role == "assistant", second

        c = client.completions.create(model="tiny-llama", prompt="hello world", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert c.object == "text_completion" and isinstance(c.choices[0].text, str), c
        assert c.usage.completion_tokens == 8 and c.choices[0].finish_reason == "length", c

        streamed = "".join(ch.choices[0].text for ch in client.completions.create(
            model="tiny-llama", prompt="hello world", max_tokens=8, temperature=0, stream=True,
            extra_body={"ignore_eos": True}) if ch.choices)
        assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

        # An adapter changes the continuation (the PEFT goldens check its numbers; here: it is applied).
        a = client.completions.create(model="a-qv-r4", prompt="hello world", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert a.model == "a-qv-r4" and a.choices[0].text != c.choices[0].text, (a, c)

        # A MoLE composition, restricted to two of its experts by the extension field (passed through by the router).
        m = client.completions.create(model="mole-abc", prompt="hello world", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True, "mole_experts": ["a-qv-r4", "c-kod-r2"]})
        assert m.model == "mole-abc" and m.usage.completion_tokens == 8, m
        try:
            client.completions.create(model="a-qv-r4", prompt="x", max_tokens=2, extra_body={"mole_experts": ["a-qv-r4"]})
            raise AssertionError("mole_experts on a plain adapter was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "mole_experts" in str(e), e

        chat = client.chat.completions.create(model="b-all-r8-rslora", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=6, temperature=0, seed=7)
        assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant", chat
        assert chat.usage.prompt_tokens > 0, chat

        chunks = list(client.chat.completions.create(
            model="b-all-r8-rslora", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
            seed=7, stream=True, stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == chat.choices[0].message.content, (text, chat.choices[0].message.content)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

        # Log-probabilities as the SDK types them: chat's content records with alternatives, whole and streamed.
        lp = client.chat.completions.create(model="b-all-r8-rslora", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, temperature=0, logprobs=True, top_logprobs=3,
                                            extra_body={"ignore_eos": True})
        content = lp.choices[0].logprobs.content
        assert len(content) == 6 and all(len(t.top_logprobs) == 3 for t in content), lp
        assert all(t.logprob <= 0 and t.logprob == t.top_logprobs[0].logprob for t in content), content  # greedy
        assert bytes(b for t in content for b in t.bytes).decode("utf-8", "replace") == lp.choices[0].message.content
        streamed = [t for ch in client.chat.completions.create(
            model="b-all-r8-rslora", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
            logprobs=True, top_logprobs=3, stream=True, extra_body={"ignore_eos": True})
            if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content or []]
        assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content], (streamed, content)
        # Completions' legacy shape; penalties and a bias that bans the greedy first token.
        cl = client.completions.create(model="tiny-llama", prompt="hello world", max_tokens=4, temperature=0, logprobs=2,
                                       extra_body={"ignore_eos": True})
        assert len(cl.choices[0].logprobs.tokens) == 4 and len(cl.choices[0].logprobs.token_logprobs) == 4, cl
        assert cl.choices[0].logprobs.text_offset[0] == 0 and all(len(t) >= 1 for t in cl.choices[0].logprobs.top_logprobs), cl
        # n choices: choice i of a seeded request is the single request with seed + i, whole and streamed.
        many = client.completions.create(model="a-qv-r4", prompt="hello world", max_tokens=6, temperature=0.9, seed=41, n=3,
                                         extra_body={"ignore_eos": True})
        assert [c.index for c in many.choices] == [0, 1, 2] and many.usage.completion_tokens == 18, many
        for i in range(3):
            one = client.completions.create(model="a-qv-r4", prompt="hello world", max_tokens=6, temperature=0.9, seed=41 + i,
                                            extra_body={"ignore_eos": True})
            assert many.choices[i].text == one.choices[0].text, (i, many.choices[i].text, one.choices[0].text)
        texts = {}
        for ch in client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                                 temperature=0.9, seed=3, n=2, stream=True, extra_body={"ignore_eos": True}):
            for c in ch.choices:
                texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        whole = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                               temperature=0.9, seed=3, n=2, extra_body={"ignore_eos": True})
        assert texts == {c.index: c.message.content for c in whole.choices}, (texts, whole)

        # A batch of prompts (as evaluation harnesses send them), with n = 2: choice index prompt · n + choice, each
        # what the prompt alone gives; usage counts each prompt once.
        batch = client.completions.create(model="a-qv-r4", prompt=["hello world", "once upon a"], max_tokens=4, temperature=0, n=2,
                                          extra_body={"ignore_eos": True})
        alone = [client.completions.create(model="a-qv-r4", prompt=p, max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
                 for p in ["hello world", "once upon a"]]
        assert [c.index for c in batch.choices] == [0, 1, 2, 3], batch
        assert [c.text for c in batch.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2, (batch, alone)
        assert batch.usage.prompt_tokens == alone[0].usage.prompt_tokens + alone[1].usage.prompt_tokens, batch.usage
        assert batch.usage.completion_tokens == 16, batch.usage
        ids = client.completions.create(model="tiny-llama", prompt=[[152], [152, 34]], max_tokens=2, temperature=0, logprobs=1,
                                        echo=True, extra_body={"ignore_eos": True})
        assert [len(c.logprobs.tokens) for c in ids.choices] == [3, 4], ids

        # vLLM's sampling extensions, as clients written for vLLM send them.
        v = client.completions.create(model="a-qv-r4", prompt="hello world", max_tokens=6, temperature=0.8, seed=5,
                                      extra_body={"repetition_penalty": 1.2, "min_p": 0.05, "min_tokens": 6, "stop_token_ids": [319]})
        assert v.usage.completion_tokens == 6 and v.choices[0].finish_reason == "length", v

        # JSON mode: what ends with end-of-sequence parses as one JSON object.
        import json as _json
        objects = 0
        for seed in range(6):
            j = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "json please"}], max_tokens=120,
                                               temperature=1, seed=seed, response_format={"type": "json_object"})
            if j.choices[0].finish_reason == "stop":
                assert isinstance(_json.loads(j.choices[0].message.content), dict), j
                objects += 1
        assert objects > 0, "no JSON-mode answer completed its object"

        # Structured outputs as the SDK's own `parse` sends them (a Pydantic model → a strict json_schema): what completes
        # parses into the model, and jsonschema (the reference validator) accepts it against the model's schema.
        import jsonschema
        from typing import Annotated, Literal
        from pydantic import BaseModel, Field

        class Item(BaseModel):
            word: Annotated[str, Field(max_length=3)]
            n: Annotated[int, Field(ge=-5, lt=40)]  # numeric bounds: served, and checked by jsonschema below
            mood: Literal["up", "down"]
        parsed = 0
        for seed in range(8):
            try:
                p = client.chat.completions.parse(model="tiny-llama", messages=[{"role": "user", "content": "json"}], max_tokens=200,
                                                  temperature=1, seed=seed, response_format=Item)
            except openai.LengthFinishReasonError:
                continue
            jsonschema.validate(_json.loads(p.choices[0].message.content), Item.model_json_schema())
            assert isinstance(p.choices[0].message.parsed, Item), p
            parsed += 1
        assert parsed >= 3, f"only {parsed} of 8 structured answers completed"
        # vLLM's disable_any_whitespace: valid, and no whitespace outside strings.
        compact = 0
        for seed in range(4):
            w = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "json"}], max_tokens=120, temperature=1,
                                               seed=seed, extra_body={"structured_outputs": {"json": Item.model_json_schema(), "disable_any_whitespace": True}})
            t = w.choices[0].message.content
            if w.choices[0].finish_reason == "stop":
                jsonschema.validate(_json.loads(t), Item.model_json_schema())
                assert not any(ch.isspace() for ch in outside_strings(t)), t
                compact += 1
        assert compact >= 2, f"only {compact} of 4 compact answers completed"
        for seed in range(3):
            g = client.completions.create(model="a-qv-r4", prompt="pick", max_tokens=20, temperature=1, seed=seed,
                                          extra_body={"guided_choice": ["yes", "no", "maybe so"]})
            assert g.choices[0].text in ("yes", "no", "maybe so") and g.choices[0].finish_reason == "stop", g
            # vLLM's current spelling of the same (its guided_* were removed in v0.12).
            v = client.completions.create(model="a-qv-r4", prompt="pick", max_tokens=20, temperature=1, seed=seed,
                                          extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe so"]}})
            assert v.choices[0].text == g.choices[0].text, (v, g)
            rx = client.completions.create(model="a-qv-r4", prompt="code", max_tokens=30, temperature=1, seed=seed,
                                           extra_body={"structured_outputs": {"regex": r"[A-Z]{2}-\d{3}( ok| no)?"}})
            assert re.fullmatch(r"[A-Z]{2}-\d{3}( ok| no)?", rx.choices[0].text), rx
        try:
            client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                           response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "string", "pattern": r"(a)\1"}}})
            raise AssertionError("a pattern with a backreference accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == "response_format" and "pattern" in e.body["message"], e.body

        # Echo with logprobs, as evaluation harnesses score a continuation (lm-eval's local-completions).
        ec = client.completions.create(model="a-qv-r4", prompt="hello world", max_tokens=1, temperature=0, logprobs=1,
                                       echo=True, extra_body={"ignore_eos": True})
        elp = ec.choices[0].logprobs
        assert ec.choices[0].text.startswith("hello world") and len(elp.tokens) == ec.usage.prompt_tokens + 1, ec
        assert elp.token_logprobs[0] is None and all(v <= 0 for v in elp.token_logprobs[1:]), elp
        assert elp.top_logprobs[0] is None and all(len(t) >= 1 for t in elp.top_logprobs[1:]), elp
        chunks = [ch for ch in client.completions.create(model="a-qv-r4", prompt="hello world", max_tokens=3, temperature=0, logprobs=1,
                                                         echo=True, stream=True, extra_body={"ignore_eos": True}) if ch.choices]
        assert chunks[0].choices[0].text == "hello world" and len(chunks[0].choices[0].logprobs.tokens) == ec.usage.prompt_tokens, chunks[0]
        assert sum(len(ch.choices[0].logprobs.tokens) for ch in chunks if ch.choices[0].logprobs) == ec.usage.prompt_tokens + 3, chunks
        first = client.completions.create(model="tiny-llama", prompt=[152], max_tokens=1, temperature=0, logprobs=0)
        banned = first.choices[0].logprobs.tokens[0]
        tok = client.completions.create(model="tiny-llama", prompt=[152], max_tokens=1, temperature=0, logprobs=0,
                                        logit_bias={"34": -100}, presence_penalty=0.5, frequency_penalty=0.5)
        assert first.choices[0].text != tok.choices[0].text and tok.choices[0].logprobs.tokens[0] != banned, (first, tok)

        try:
            client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
            raise AssertionError("unknown model accepted")
        except openai.NotFoundError as e:
            assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body

        try:
            client.completions.create(model="tiny-llama", prompt="x", max_tokens=2, extra_body={"best_of": 3})
            raise AssertionError("unsupported parameter accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == "best_of", e.body

        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("bad key accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401

        if cluster:
            check_router_metrics(port)
            children = replica_pids(proc.pid)
            assert len(children) == 2, children
        else:
            check_metrics(port)

        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        assert rc == 0, f"{'dlora cluster' if cluster else 'dlora serve'} exited with {rc} after SIGTERM"
        if cluster:
            time.sleep(0.2)
            alive = [p for p in children if os.path.exists(f"/proc/{p}") and "zombie" not in open(f"/proc/{p}/status").read()]
            assert not alive, f"replicas still running after the cluster stopped: {alive}"
        print(f"openai client{' (through the router)' if cluster else ''}: all checks passed")
    finally:
        if proc.poll() is None:
            # The cluster's replicas are its children: stop them by PID too, never leave them running.
            kill_all(proc, replica_pids(proc.pid) if cluster else [])


if __name__ == "__main__":
    main()
