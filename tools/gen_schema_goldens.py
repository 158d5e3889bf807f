#!/usr/bin/env python3
"""JSON schemas and texts labelled by the reference validator (Python's json module, strict, then jsonschema's
Draft 2020-12 validator), for structured outputs' grammar (Tests/EngineTests/StructuredOutputTests.swift):

  Tests/Fixtures/json/schemas.json   {reference, cases: [{schema, texts: [{text, valid, canonical}]}], refused: [...]}

For each schema: instances written the way the grammar generates them (properties in the schema's order, optional
ones sometimes left out, enum/const values compact, random whitespace: `canonical`), the same instances with keys
reordered (valid JSON Schema, not canonical), and deterministic mutations of the canonical ones (a byte replaced,
inserted or deleted). `refused` lists schemas the grammar must refuse (keywords it cannot honour).
Usage: python3 tools/gen_schema_goldens.py
"""
import decimal
import json
import math
import random
import re
from pathlib import Path

import jsonschema

from gen_json_goldens import mutate

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests/Fixtures/json/schemas.json"

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]},
    {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "boolean"}, "c": {"type": "null"},
                                      "d": {"type": "string", "minLength": 2, "maxLength": 4}}, "required": ["b"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["red", "green", 3, None, {"k": [1, "x\n"]}]},
                                               "minItems": 1, "maxItems": 3},
                                      "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"const": "é\"\\"}], "items": False}},
     "required": ["tags", "pair"]},
    {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer"},
               {"type": "object", "properties": {"x": {"type": ["integer", "null"]}}, "required": ["x"]}]},
    {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                          "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
                        "required": ["v"]}},
     "$ref": "#/$defs/node"},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string", "format": "uuid", "title": "Id"}},
                                "required": ["id"], "description": "annotations are ignored"}, "minItems": 2},
    {"type": "object", "properties": {"opt1": {"type": "integer"}, "opt2": {"type": "string"}, "opt3": {"type": "boolean"}}},
    {"type": ["number", "string"], "minLength": 1},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 2}}, "required": ["s"]},
    {"oneOf": [{"const": 1}, {"const": "one"}], "title": "t"},
    True,
    {"allOf": [{"type": "object", "properties": {"k": {"enum": [1.5, 2, "2"]}}, "required": ["k"]}]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
                                      "tag": {"type": "string", "pattern": "ab+c?"},
                                      "quote": {"type": "string", "pattern": "^\"[^\"]*\\\\.$"},
                                      "id": {"type": "string", "format": "uuid"}, "ip": {"type": "string", "format": "ipv4"},
                                      "day": {"type": "string", "format": "date"}},
     "required": ["code", "tag", "quote"]},
    {"type": "array", "items": {"enum": ["a1", "b2", "ab", 3, "x-a"], "pattern": "^a"}},
    # Numeric bounds: inclusive and exclusive, integral and fractional, one-sided, negative, beside enum and other types.
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 150},
                                      "score": {"type": "number", "minimum": 0, "maximum": 1},
                                      "temp": {"type": "number", "exclusiveMinimum": -273.15, "maximum": 1000.5},
                                      "n": {"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 12}},
     "required": ["age", "score", "temp", "n"]},
    {"type": "integer", "minimum": 3},
    {"type": "array", "items": {"type": "integer", "maximum": -10}, "maxItems": 3},
    {"type": ["integer", "string"], "minimum": 100, "maximum": 100000, "maxLength": 3},
    {"type": "number", "minimum": 0.001, "exclusiveMaximum": 0.01},
    {"type": "number", "exclusiveMinimum": -2.5, "exclusiveMaximum": -0.25},
    {"type": "integer", "minimum": 2.5, "maximum": 7.5},
    {"enum": [1, 5, 10.5, "x", 20], "minimum": 4, "exclusiveMaximum": 20},
    # Whole-number steps (multipleOf), alone, with bounds, on numbers, beside an enum.
    {"type": "object", "properties": {"qty": {"type": "integer", "multipleOf": 5, "minimum": -100, "maximum": 1000},
                                      "lucky": {"type": "integer", "multipleOf": 7},
                                      "even": {"type": "number", "multipleOf": 2, "exclusiveMinimum": 0, "maximum": 31}},
     "required": ["qty", "lucky", "even"]},
    {"enum": [3, 6, 7.5, 9, "x"], "multipleOf": 3, "maximum": 8},
    {"type": "integer", "multipleOf": 250, "minimum": 1, "exclusiveMaximum": 100000},
    # Property counts: optional properties written as the bounds allow; a map with at most two keys, at least one.
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 2}, "c": {"type": "boolean"},
                                      "d": {"type": "null"}}, "required": ["b"], "minProperties": 2, "maxProperties": 3},
    {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "minProperties": 1},
    {"type": "object", "additionalProperties": {"type": "boolean"}, "minProperties": 1, "maxProperties": 2},
    {"enum": [{"k": 1}, {"k": 1, "j": 2}, {}, [1, 2, 3], [4]], "minProperties": 1, "maxProperties": 1, "maxItems": 2},
    # Distinct items from a finite set: an Enum through $ref (Pydantic's set[Color]), Booleans, a bounded enum with a
    # value equal to another (1 and 1.0) and one the item's type rules out, and arrays of an enum.
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"$ref": "#/$defs/Color"}, "uniqueItems": True},
                                      "flags": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True, "minItems": 1}},
     "required": ["colors", "flags"], "$defs": {"Color": {"enum": ["red", "green", "blue"], "title": "Color", "type": "string"}}},
    {"type": "array", "items": {"enum": [1, 1.0, 2, "x", 3], "type": "integer"}, "uniqueItems": True, "minItems": 2, "maxItems": 2},
    {"enum": [[1, 1], [1, 2], [3]], "uniqueItems": True},
]

# Values of the pattern and format schemas above, as the model could write them (the instance generator picks one).
PATTERN_SAMPLES = {
    "^[A-Z]{2}-\\d{3}$": ["AB-123", "ZZ-000"],
    "ab+c?": ["ab", "xxabbbc", "abz", "é ab\n"],
    "^\"[^\"]*\\\\.$": ['"\\x', '"abc\\\\', '"é\\\t'],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000", "FFFFFFFF-0000-1111-2222-333333333333"],
    "ipv4": ["192.168.0.1", "255.255.255.255", "0.0.0.0"],
    "date": ["2024-02-29", "1999-12-31"],
}

REFUSED = [
    {"type": "string", "pattern": "(a)\\1"},
    {"type": "string", "pattern": "a+", "maxLength": 3},
    {"enum": ["a"], "pattern": 1},
    {"enum": ["b"], "pattern": "^a"},
    {"type": "number", "multipleOf": 0.5},
    {"type": "integer", "multipleOf": 0},
    {"type": "integer", "multipleOf": 10000},
    {"type": "integer", "multipleOf": 7, "minimum": 8, "maximum": 13},
    {"type": "integer", "minimum": 5, "maximum": 4},
    {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 5},
    {"type": "number", "minimum": 1, "exclusiveMaximum": 1},
    {"type": "integer", "minimum": "3"},
    {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
    {"type": "array", "uniqueItems": True},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]},
    {"$ref": "#/$defs/missing"},
    {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"type": "wat"},
    {"type": "string", "minLength": 5, "maxLength": 2},
    False,
    {"anyOf": [{"type": "string"}], "type": "string"},
    {"$ref": "http://example.com/schema"},
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
    {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 2},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"], "maxProperties": 1},
    {"type": "object", "minProperties": 3, "maxProperties": 2},
    {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    {"type": "array", "uniqueItems": True},
    {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True, "minItems": 3},
    {"type": "array", "prefixItems": [{"const": 1}], "items": {"const": 2}, "uniqueItems": True},
]

STRINGS = ["", "a", "ab", "héllo", "x\"y", "back\\slash", "tab\t", "😀", "日本語", "\u0001", "end"]


def ws(rng):
    return rng.choice(["", "", "", " ", "\n  ", "\t"])


def dump(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def string_instance(rng, lo=0, hi=None):
    for _ in range(50):
        s = rng.choice(STRINGS) + rng.choice(STRINGS)
        if len(s) >= lo and (hi is None or len(s) <= hi):
            return s
    return "a" * lo


def resolve(root, ref):
    node = root
    for part in ref[2:].split("/") if ref != "#" else []:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def instance(schema, root, rng, depth=0):
    """Text of a value valid against `schema`, written as the grammar would generate it."""
    if schema is True or schema == {}:
        return rng.choice(["1", "\"x\"", "null", "[true]", "{\"k\":{}}"])
    if "$ref" in schema:
        return instance(resolve(root, schema["$ref"]), root, rng, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return instance(rng.choice(schema[key]), root, rng, depth + 1)
    if "allOf" in schema:
        return instance(schema["allOf"][0], root, rng, depth + 1)
    if "const" in schema:
        return dump(schema["const"])
    if "enum" in schema:
        pattern = schema.get("pattern")
        return dump(rng.choice([v for v in schema["enum"] if not (pattern and isinstance(v, str) and not re.search(pattern, v))
                                and valid(dump(v), schema)]))
    types = schema.get("type")
    if types is None:
        types = ["object"] if "properties" in schema or "additionalProperties" in schema else ["integer"]
    if isinstance(types, str):
        types = [types]
    t = rng.choice(types)
    if t == "object":
        props = schema.get("properties")
        counted = "minProperties" in schema or "maxProperties" in schema
        if props is None and not counted:
            n = rng.randrange(3)
            members = [dump(string_instance(rng)) + ws(rng) + ":" + ws(rng) + instance(schema.get("additionalProperties", True), root, rng, depth + 1)
                       for _ in range(n)]
        elif not counted:
            req = schema.get("required", [])
            members = [dump(k) + ws(rng) + ":" + ws(rng) + instance(v, root, rng, depth + 1)
                       for k, v in props.items() if k in req or (depth < 3 and rng.random() < 0.5)]
        elif props is None:
            lo, hi = schema.get("minProperties", 0), schema.get("maxProperties")
            n, keys = rng.randint(lo, min(2, hi) if hi is not None else 2), []
            while len(keys) < n:  # distinct keys: a repeated one counts once
                k = string_instance(rng)
                if k not in keys:
                    keys.append(k)
            members = [dump(k) + ws(rng) + ":" + ws(rng) + instance(schema.get("additionalProperties", True), root, rng, depth + 1)
                       for k in keys]
        else:
            lo, hi = schema.get("minProperties", 0), schema.get("maxProperties")
            req = schema.get("required", [])
            chosen = [k for k in props if k in req or (depth < 3 and rng.random() < 0.5)]
            optional = [k for k in props if k not in chosen]
            while len(chosen) < lo:  # written in the order properties lists them
                chosen.append(optional.pop(rng.randrange(len(optional))))
            while hi is not None and len(chosen) > hi:
                chosen.remove(rng.choice([k for k in chosen if k not in req]))
            members = [dump(k) + ws(rng) + ":" + ws(rng) + instance(props[k], root, rng, depth + 1) for k in props if k in chosen]
        return "{" + ws(rng) + (ws(rng) + "," + ws(rng)).join(members) + ws(rng) + "}"
    if t == "array" and schema.get("uniqueItems") is True:
        item = schema["items"]
        while "$ref" in item:
            item = resolve(root, item["$ref"])
        domain = item.get("enum", [item["const"]] if "const" in item else [False, True] if item.get("type") == "boolean" else [None])
        values = []
        for v in domain:  # the values the item schema allows, each once (1 and 1.0 are one)
            if valid(dump(v), {**item, "$defs": root.get("$defs", {})}) and not any(v == w and type(v) is not bool and type(w) is not bool or v is w for w in values):
                values.append(v)
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", len(values)), len(values))
        chosen = sorted(rng.sample(range(len(values)), rng.randint(lo, hi)))
        return "[" + ws(rng) + (ws(rng) + "," + ws(rng)).join(dump(values[i]) for i in chosen) + ws(rng) + "]"
    if t == "array":
        prefix = schema.get("prefixItems", [])
        lo = max(schema.get("minItems", 0), 0)
        hi = schema.get("maxItems", len(prefix) if schema.get("items") is False else max(lo, len(prefix)) + (2 if depth < 3 else 0))
        n = rng.randint(max(lo, 0), hi)
        items = [instance(prefix[i] if i < len(prefix) else schema.get("items", True), root, rng, depth + 1) for i in range(n)]
        return "[" + ws(rng) + (ws(rng) + "," + ws(rng)).join(items) + ws(rng) + "]"
    if t == "string":
        key = schema.get("pattern") or schema.get("format")
        if key in PATTERN_SAMPLES:
            return dump(rng.choice(PATTERN_SAMPLES[key]))
        return dump(string_instance(rng, schema.get("minLength", 0), schema.get("maxLength")))
    bounded = any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"))
    if (t == "integer" or "multipleOf" in schema) and bounded:
        # A whole-number step: the grammar writes integers, for number as for integer.
        lo, hi = bounds(schema)
        lo = -10**6 if lo is None else (math.floor(lo[0]) + 1 if lo[1] else math.ceil(lo[0]))
        hi = 10**6 if hi is None else (math.ceil(hi[0]) - 1 if hi[1] else math.floor(hi[0]))
        k = schema.get("multipleOf", 1)
        lo, hi = -(-lo // k) * k, hi // k * k
        return str(rng.choice([lo, hi, rng.randint(lo // k, hi // k) * k, rng.randint(lo // k, hi // k) * k]))
    if t == "integer":
        return str(rng.choice([0, 7, -12, 123456789]))
    if t == "number" and bounded:
        # No exponent: a bounded number is written as integer part and fraction (the grammar's subset).
        lo, hi = bounds(schema)
        a = -1e6 if lo is None else lo[0]
        b = 1e6 if hi is None else hi[0]
        picks = [f"{rng.uniform(a, b):.{rng.randint(0, 5)}f}" for _ in range(3)]
        picks += [repr_decimal(lo[0])] if lo is not None and not lo[1] else []
        picks += [repr_decimal(hi[0])] if hi is not None and not hi[1] else []
        good = [p for p in picks if valid(p, schema)]
        return rng.choice(good or [repr_decimal((a + b) / 2)])
    if t == "number":
        return rng.choice(["0", "-1.5", "2e10", "3.25E-2", "10"])
    if t == "boolean":
        return rng.choice(["true", "false"])
    return "null"


def bounds(schema):
    """(value, exclusive) of the lower and the upper bound (None: unbounded); the tighter where two are given."""
    lo = hi = None
    if "minimum" in schema:
        lo = (schema["minimum"], False)
    if "exclusiveMinimum" in schema and (lo is None or schema["exclusiveMinimum"] >= lo[0]):
        lo = (schema["exclusiveMinimum"], True)
    if "maximum" in schema:
        hi = (schema["maximum"], False)
    if "exclusiveMaximum" in schema and (hi is None or schema["exclusiveMaximum"] <= hi[0]):
        hi = (schema["exclusiveMaximum"], True)
    return lo, hi


def repr_decimal(x):
    """A number's shortest text without an exponent."""
    if isinstance(x, int):
        return str(x)
    text = format(decimal.Decimal(repr(x)), "f")
    return text[:-2] if text.endswith(".0") else text


def reorder(text):
    """The same value with every object's keys reversed (valid JSON Schema; not the grammar's order)."""
    def rev(v):
        if isinstance(v, dict):
            return {k: rev(v[k]) for k in reversed(list(v))}
        if isinstance(v, list):
            return [rev(x) for x in v]
        return v
    return dump(rev(json.loads(text)))


def items_changed(text):
    """Every array in the value with its first item repeated at its end, and with its last item left out, compact:
    texts whose validity turns on uniqueness and the item counts."""
    value = json.loads(text)
    out = []

    def arrays(v, path):
        if isinstance(v, list):
            yield path
            for i, x in enumerate(v):
                yield from arrays(x, path + [i])
        elif isinstance(v, dict):
            for k, x in v.items():
                yield from arrays(x, path + [k])

    def changed(v, path, f):
        if not path:
            return f(v)
        v = json.loads(json.dumps(v))
        node = v
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = f(node[path[-1]])
        return v
    for path in list(arrays(value, [])):
        out.append(dump(changed(value, path, lambda a: a + a[:1])))
        out.append(dump(changed(value, path, lambda a: a[:-1])))
    return out


def members_changed(text, schema):
    """The same object with one member left out, and with one more of `properties` written (in their order), compact:
    texts in the grammar's own order whose validity turns on the property counts."""
    value = json.loads(text)
    if not isinstance(value, dict):
        return []
    out = [dump({k: v for k, v in value.items() if k != drop}) for drop in value]
    props = schema.get("properties", {})
    for extra in props:
        if extra not in value:
            sample = {"integer": 1, "string": "a", "boolean": True, "null": None}.get(props[extra].get("type"), 1)
            out.append(dump({k: ({**value, extra: sample})[k] for k in props if k in value or k == extra}))
    if not props:
        out.append(dump({**value, "zz": True}))
    return out


def valid(text, schema):
    def refuse(name):
        raise ValueError(name)
    try:
        value = json.loads(text, strict=True, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    # Formats asserted where the check is exact (uuid, ipv4); "date" stays an annotation (the grammar shapes it but
    # does not know month lengths, which Python's date check does).
    checker = jsonschema.FormatChecker(formats=["uuid", "ipv4"])
    return jsonschema.Draft202012Validator(schema, format_checker=checker).is_valid(value)


def main():
    rng = random.Random(11)
    alphabet = '{}[]:,"\\ 0123456789.eE+-tfnulrsaé\n\x01x'
    cases = []
    for schema in SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(schema)
        texts, seen = [], set()

        def add(t, canonical):
            if t not in seen:
                seen.add(t)
                texts.append(dict(text=t, valid=valid(t, schema), canonical=canonical))
        canon = [instance(schema, schema, rng) for _ in range(25)]
        for t in canon:
            add(t, True)
            assert valid(t, schema), (schema, t)
        for t in canon[:8]:
            add(reorder(t), False)
        if "uniqueItems" in json.dumps(schema):
            for t in canon[:8]:
                for v in items_changed(t):
                    add(v, False)
        if "minProperties" in json.dumps(schema) or "maxProperties" in json.dumps(schema):
            for t in canon[:8]:
                for v in members_changed(t, schema):
                    add(v, False)
        for t in canon:
            for _ in range(6):
                add(mutate(t, rng, alphabet), False)
        cases.append(dict(schema=schema, texts=texts))
    out = dict(reference=f"Python json (strict) + jsonschema {__import__('importlib.metadata').metadata.version('jsonschema')} "
                         "Draft202012Validator; tools/gen_schema_goldens.py",
               cases=cases, refused=REFUSED)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{OUT}: {len(cases)} schemas, {sum(len(c['texts']) for c in cases)} texts, {len(REFUSED)} refused")


if __name__ == "__main__":
    main()
