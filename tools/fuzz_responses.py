#!/usr/bin/env python3
"""Random `/v1/responses` requests against a running server or router (not part of the test command).

Bodies are built from the API's parts (string or item input: messages with text parts, function calls and their
outputs; instructions, function tools, tool_choice, text.format with small schemas, sampling settings, stream) and
then, half of the time, damaged: a member dropped, retyped, duplicated in the raw text, renamed, or given an awkward
value (deep nesting, huge numbers, unicode, control characters). Checks: every answer is 200 or a 4xx in OpenAI's error
shape (never a 5xx, a hang or a dropped connection); a whole 200 is a response object whose output is a message or
function calls; a stream is typed events numbered from 0 whose last is response.completed or response.incomplete,
and whose deltas add up to the final text; a completed answer under a json_schema format is valid against it; the
server still answers at the end.

usage: fuzz_responses.py URL MODEL [DURATION] [SEED]   (FZ_TIMEOUT: seconds per request, default 120; a damaged body
may lose max_output_tokens, so start a large model's server with --max-tokens-limit to bound its answers)
"""
import json
import random
import sys
import time
import urllib.error
import urllib.request

import jsonschema

WORDS = ["hi", "é", "x\"y", "back\\slash", "tab\t", "😀", "日本", "", " ", "\u0001", "<tool_call>", "a" * 300]
SCHEMAS = [
    {"type": "object", "properties": {"zz": {"type": "integer"}, "aa": {"type": "string", "maxLength": 5}}, "required": ["zz", "aa"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}},
    {"type": "object", "properties": {"k": {"enum": ["a", "b", 3]}}, "required": ["k"]},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
]
TOOL = {"type": "function", "name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}


def body(rng, model):
    b = {"model": model, "max_output_tokens": rng.choice([1, 4, 16, 40])}
    if rng.random() < 0.5:
        b["input"] = rng.choice(WORDS)
    else:
        items = []
        for _ in range(rng.randint(1, 4)):
            k = rng.random()
            if k < 0.6:
                content = rng.choice(WORDS) if rng.random() < 0.5 else [{"type": rng.choice(["input_text", "output_text"]), "text": rng.choice(WORDS)}]
                items.append({"role": rng.choice(["user", "assistant", "system", "developer"]), "content": content})
            elif k < 0.8:
                items.append({"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": json.dumps({"city": rng.choice(WORDS)})})
            else:
                items.append({"type": "function_call_output", "call_id": "c1", "output": rng.choice(WORDS)})
        b["input"] = items
    if rng.random() < 0.3:
        b["instructions"] = rng.choice(WORDS)
    if rng.random() < 0.25:
        b["tools"] = [TOOL]
        b["tool_choice"] = rng.choice(["auto", "none", "required", {"type": "function", "name": "get_weather"}])
        b["parallel_tool_calls"] = False
    elif rng.random() < 0.3:
        s = rng.choice(SCHEMAS)
        b["text"] = {"format": {"type": "json_schema", "name": "t", "schema": s}} if rng.random() < 0.8 else {"format": {"type": "json_object"}}
    for key, values in [("temperature", [0, 0.7, 1.5]), ("top_p", [0.5, 1]), ("seed", [1, 2]), ("stream", [True, False]),
                        ("store", [False]), ("metadata", [{"a": "b"}])]:
        if rng.random() < 0.3:
            b[key] = rng.choice(values)
    return b


AWKWARD = [None, True, -1, 0, 2 ** 63, 1e300, "", "x" * 5000, [], {}, [[[[[[]]]]]], {"a": {"b": {"c": {}}}}, "\u0000", "😀" * 50]


def damage(rng, b):
    text = None
    k = rng.random()
    keys = list(b.keys())
    if k < 0.2 and keys:
        del b[rng.choice(keys)]
    elif k < 0.45 and keys:
        b[rng.choice(keys)] = rng.choice(AWKWARD)
    elif k < 0.55:
        b[rng.choice(["previous_response_id", "background", "reasoning", "include", "truncation", "prompt", "conversation", "best_of",
                      "max_tool_calls", "zzz", "n", "messages", "max_tokens", "response_format"])] = rng.choice(AWKWARD + ["auto", "resp_1", 2])
    elif k < 0.7 and isinstance(b.get("input"), list) and b["input"]:
        item = rng.choice(b["input"])
        item[rng.choice(["type", "role", "content", "call_id", "output", "arguments", "name", "extra"])] = rng.choice(AWKWARD + ["input_image", "reasoning"])
    elif k < 0.8 and "tools" in b:
        b["tools"][0] = dict(b["tools"][0], **{rng.choice(["type", "name", "parameters", "extra"]): rng.choice(AWKWARD + ["web_search"])})
    elif k < 0.9 and "text" in b:
        b["text"]["format"][rng.choice(["type", "schema", "name", "extra"])] = rng.choice(AWKWARD + [{"not": {}}])
    else:
        text = json.dumps(b)
        text = text[:-1] + ', "model": "dup"}' if rng.random() < 0.5 else text[: rng.randint(0, len(text))]
    return text or json.dumps(b)


def post(url, data, stream):
    req = urllib.request.Request(url + "/v1/responses", data=data.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=float(__import__("os").environ.get("FZ_TIMEOUT", "120"))) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def check_whole(b, text, problems):
    o = json.loads(text)
    assert o["object"] == "response" and o["id"].startswith("resp_") and o["status"] in ("completed", "incomplete"), text
    assert o["output"] and all(i["type"] in ("message", "function_call") for i in o["output"]), text
    return o


def check_stream(text):
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        payload = json.loads(lines[1][6:])
        assert payload["type"] == lines[0][7:], block
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events))), text
    if events[-1]["type"] == "error":
        return None
    assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed", "response.incomplete"), text
    final = events[-1]["response"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    texts = [p["text"] for i in final["output"] if i["type"] == "message" for p in i["content"]]
    assert deltas == "".join(texts), (deltas, texts)
    return final


def main():
    url, model = sys.argv[1], sys.argv[2]
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    counts = {"requests": 0, "ok": 0, "refused": 0, "validated": 0}
    bad = []
    end = time.time() + duration
    while time.time() < end:
        b = body(rng, model)
        damaged = rng.random() < 0.5
        data = damage(rng, b) if damaged else json.dumps(b)
        stream = isinstance(b, dict) and b.get("stream") is True
        counts["requests"] += 1
        try:
            status, text = post(url, data, stream)
        except Exception as e:  # a dropped connection or a timeout
            bad.append(("transport", data[:300], repr(e)))
            continue
        if status >= 500 or (status != 200 and not (400 <= status < 500)):
            bad.append((status, data[:300], text[:300]))
            continue
        if status != 200:
            try:
                err = json.loads(text)["error"]
                assert isinstance(err["message"], str) and err["message"]
            except Exception as e:
                bad.append(("error shape", data[:300], text[:300]))
            counts["refused"] += 1
            continue
        counts["ok"] += 1
        try:
            sent = json.loads(data)
            final = check_stream(text) if text.startswith("event:") else check_whole(sent, text, bad)
            fmt = ((sent.get("text") or {}).get("format") or {}) if isinstance(sent.get("text"), dict) else {}
            if final and final["status"] == "completed" and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
                out = "".join(p["text"] for i in final["output"] if i["type"] == "message" for p in i["content"])
                jsonschema.validate(json.loads(out), fmt["schema"])
                counts["validated"] += 1
        except Exception as e:
            bad.append(("answer", data[:300], repr(e)[:300]))
    status, _ = post(url, json.dumps({"model": model, "input": "still there?", "max_output_tokens": 2}), False)
    print(json.dumps(counts), "final status", status)
    for b in bad[:20]:
        print("BAD", b)
    sys.exit(1 if bad or status != 200 else 0)


if __name__ == "__main__":
    main()
