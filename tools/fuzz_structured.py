#!/usr/bin/env python3
"""Random structured-output and tool-call requests against a running server (not part of the test command).

Random JSON schemas (nested objects and arrays, optional properties, enums of awkward strings, anyOf, recursive
$refs, bounds, and keywords the server must refuse), guided_choice lists and tool definitions, sent with random
modes (whole, streamed, n), for DURATION seconds. Checks: every answer is 200 or a 400 naming a parameter (never a
5xx, a hang or a dropped connection); every completed structured answer is valid against its schema by jsonschema (formats uuid and ipv4 asserted),
every guided_choice answer one of the choices, every tool call's arguments valid against the function's
parameters; the server still answers at the end.

usage: fuzz_structured.py URL MODEL [DURATION] [SEED]
"""
import json
import random
import sys
import time
import urllib.error
import urllib.request

import jsonschema

WORDS = ["a", "é", "x\"y", "back\\slash", "tab\t", "😀", "日本", "", " ", "null", "<tool_call>", "\u0001"]
REFUSED = ["pattern", "uniqueItems", "not", "minProperties", "if"]


def schema(rng, depth=0, defs=None):
    r = rng.random()
    if depth > 2 or r < 0.35:
        kind = rng.choice(["string", "integer", "number", "boolean", "null", "enum", "const", "strbound", "pattern", "format", "numbound"])
        if kind == "numbound":
            # Numeric bounds, inclusive or exclusive, whole or fractional, one- or two-sided, and steps (some impossible: refused).
            s = {"type": rng.choice(["integer", "number"])}
            lo = rng.choice([-1000, -2.5, -1, 0, 0.001, 3, 7.25, 1e6])
            for key, v in (("minimum", lo), ("exclusiveMinimum", lo), ("maximum", lo + rng.choice([0, 0.5, 1, 4, 100])),
                           ("exclusiveMaximum", lo + rng.choice([0, 0.01, 2, 50]))):
                if rng.random() < 0.4:
                    s[key] = v
            if rng.random() < 0.3:
                s["multipleOf"] = rng.choice([1, 2, 5, 7, 0.5, 1000])  # 0.5: refused (a fractional step)
            return s
        if kind == "pattern":
            return {"type": "string", "pattern": rng.choice([r"^[A-Z]{2}-\d{3}$", r"ab+c?", r"^\w+(\.\w+)*$", r'^"[^"]*"$', r"x|y{2,3}",
                                                              r"[é-ë]\s", r"(a)\1"])}
        if kind == "format":
            return {"type": "string", "format": rng.choice(["date", "time", "date-time", "uuid", "ipv4", "email"])}
        if kind == "enum":
            return {"enum": rng.sample(WORDS + [1, 2.5, None, True, [1], {"k": "v"}], rng.randint(1, 4))}
        if kind == "const":
            return {"const": rng.choice(WORDS + [0, -3, {"a": [None]}])}
        if kind == "strbound":
            lo = rng.randint(0, 3)
            return {"type": "string", "minLength": lo, "maxLength": lo + rng.randint(0, 6)}
        return {"type": kind}
    if r < 0.65:
        props = {f"p{i}{rng.choice(['', 'é', '_x'])}": schema(rng, depth + 1, defs) for i in range(rng.randint(0, 4))}
        s = {"type": "object", "properties": props, "required": [k for k in props if rng.random() < 0.6]}
        if not props:
            s = {"type": "object", "additionalProperties": schema(rng, depth + 1, defs)}
        return s
    if r < 0.8:
        s = {"type": "array", "items": schema(rng, depth + 1, defs)}
        if rng.random() < 0.5:
            s["maxItems"] = rng.randint(0, 3)
        if rng.random() < 0.3:
            s["minItems"] = rng.randint(0, s.get("maxItems", 2))
        return s
    if r < 0.9:
        return {"anyOf": [schema(rng, depth + 1, defs) for _ in range(rng.randint(1, 3))]}
    return {"type": ["string", "integer", "null"][: rng.randint(1, 3)]}


def top_schema(rng):
    s = schema(rng)
    if rng.random() < 0.15:
        s = {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                                   "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
                                "required": ["v"]}}, "$ref": "#/$defs/node"}
    if rng.random() < 0.1:
        s = dict(s) if isinstance(s, dict) else {}
        s[rng.choice(REFUSED)] = 1
    if rng.random() < 0.05:
        s = rng.choice([{"$ref": "#/nowhere"}, {"type": "wat"}, [], "x", {"anyOf": []}])
    return s


def post(url, body, stream):
    req = urllib.request.Request(url + ("/v1/chat/completions" if "messages" in body else "/v1/completions"),
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    if not stream:
        return status, json.loads(raw)
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", raw[-300:]
    return status, [json.loads(e) for e in events[:-1]]


def whole_from_stream(chunks, chat):
    """(text, tool calls, finish) per choice index, from a stream's chunks."""
    out = {}
    for c in chunks:
        for ch in c.get("choices", []):
            t, calls, fin = out.get(ch["index"], ("", [], None))
            if chat:
                d = ch["delta"]
                t += d.get("content") or ""
                calls += d.get("tool_calls") or []
            else:
                t += ch.get("text") or ""
            out[ch["index"]] = (t, calls, ch.get("finish_reason") or fin)
    return out


def main():
    url, model = sys.argv[1], sys.argv[2]
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 60
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    stats = {"requests": 0, "400": 0, "checked": 0, "bad": 0}
    end = time.time() + duration
    while time.time() < end:
        stats["requests"] += 1
        chat = rng.random() < 0.6
        stream = rng.random() < 0.4
        body = {"model": model, "max_tokens": rng.randint(1, 80), "temperature": rng.choice([0, 0.7, 1.2]), "seed": rng.randint(0, 99),
                "n": rng.choice([1, 1, 2]), "stream": stream}
        if chat:
            body["messages"] = [{"role": "user", "content": rng.choice(["Give JSON.", "What is the weather in Rome?", "Pick one.", "Hi"])}]
        else:
            body["prompt"] = rng.choice(["JSON:", "Answer:", "{"])
        mode = rng.choice(["json_schema", "guided_json", "guided_choice", "tools"] if chat else ["json_schema", "guided_json", "guided_choice"])
        s = None
        tools = None
        if mode == "json_schema":
            s = top_schema(rng)
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "f", "schema": s}}
        elif mode == "guided_json":
            s = top_schema(rng)
            body["guided_json"] = json.dumps(s) if rng.random() < 0.3 else s
        elif mode == "guided_choice":
            body["guided_choice"] = rng.sample([w for w in WORDS if w], rng.randint(1, 4)) if rng.random() > 0.05 else []
        else:
            tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": top_schema(rng) if rng.random() < 0.8 else None}}
                     for i in range(rng.randint(1, 3))]
            for t in tools:
                if t["function"]["parameters"] is None or not isinstance(t["function"]["parameters"], dict):
                    t["function"].pop("parameters")
                elif t["function"]["parameters"].get("type") != "object":
                    t["function"]["parameters"] = {"type": "object", "properties": {"x": t["function"]["parameters"]}, "required": ["x"]}
            body["tools"] = tools
            body["tool_choice"] = rng.choice(["auto", "required", "none", {"type": "function", "function": {"name": "f0"}}, None])
            body["parallel_tool_calls"] = rng.random() < 0.7
        status, reply = post(url, body, stream)
        if status == 400:
            stats["400"] += 1
            assert isinstance(reply, str) and json.loads(reply)["error"]["param"], reply
            continue
        if status != 200:
            stats["bad"] += 1
            print("BAD status", status, json.dumps(body)[:400], str(reply)[:400])
            continue
        choices = whole_from_stream(reply, chat) if stream else {
            c["index"]: ((c["message"]["content"] or "") if chat else c["text"], (c["message"].get("tool_calls") or []) if chat else [],
                         c["finish_reason"]) for c in reply["choices"]}
        assert sorted(choices) == list(range(body["n"])), (choices, body)
        for text, calls, finish in choices.values():
            try:
                if mode in ("json_schema", "guided_json") and finish == "stop":
                    checker = jsonschema.FormatChecker(formats=["uuid", "ipv4"])
                    jsonschema.Draft202012Validator(s, format_checker=checker).validate(json.loads(text))
                    stats["checked"] += 1
                elif mode == "guided_choice" and finish == "stop":
                    assert text in body["guided_choice"], (text, body["guided_choice"])
                    stats["checked"] += 1
                elif mode == "tools" and calls:
                    byname = {t["function"]["name"]: t["function"].get("parameters", {"type": "object", "additionalProperties": False}) for t in tools}
                    for c in calls:
                        jsonschema.Draft202012Validator(byname[c["function"]["name"]]).validate(json.loads(c["function"]["arguments"]))
                    stats["checked"] += 1
            except Exception as e:  # noqa: BLE001 — report every kind of failure with its request
                stats["bad"] += 1
                print("BAD", type(e).__name__, str(e)[:300], "\n  body:", json.dumps(body)[:600], "\n  text:", repr(text)[:300], calls)
    status, _ = post(url, {"model": model, "prompt": "still there?", "max_tokens": 2}, False)
    assert status == 200
    print(json.dumps(stats))
    sys.exit(1 if stats["bad"] else 0)


if __name__ == "__main__":
    main()
