#!/usr/bin/env python3
"""JSON texts and whether each is one JSON object, as Python's json module judges (RFC 8259: strict=True, NaN and
Infinity refused), for JSON mode's byte acceptor (Tests/EngineTests/JSONModeTests.swift):

  Tests/Fixtures/json/acceptor.json   {reference, cases: [{text, object}]}

Hand-written cases, then deterministic mutations of the valid ones (a byte replaced, inserted or deleted).
Usage: python3 tools/gen_json_goldens.py
"""
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests/Fixtures/json/acceptor.json"

VALID = [
    '{}', ' {"a":1} ', '{"a": [1, -2.5e+3, 0, 0.25, 1E9, true, false, null, "x\\n\\u00e9\\""], "b": {"c": {}}}',
    '{"k":"caf\u00e9 \U0001F600"}', '{"a":[[],[[]],{}],"b":-0}', '{"":""}', '{"a":"\\/\\\\\\b\\f\\r\\t"}',
    '{"n": -0.0e-0, "m": 10E+2, "s": "\\uABCD"}', '{\n\t"x" : [ 1 , 2 ] \r\n}',
]
INVALID = [
    '[]', '1', '"x"', '{a:1}', '{"a":01}', '{"a":1,}', '{"a":[1,]}', '{"a" 1}', '{"a":tru}', '{"a":1.}',
    '{"a":1e}', '{"a":-}', '{"a":"\\x"}', '{"a":"\\u12g4"}', '{"a":"\x01"}', '{"a":1]', '{"a":[1}',
    '{}{}', '{} x', '{"a":nul}', '{"a":.5}', '{"a":+1}', '{"a":NaN}', '{"a":Infinity}', '{"a":-01}', '{"a":1.e5}',
    "{'a':1}", '{"a":"x\ny"}',
]


def is_object(text):
    def refuse(name):
        raise ValueError(name)
    try:
        return isinstance(json.loads(text, strict=True, parse_constant=refuse), dict)
    except ValueError:
        return False


def mutate(text, rng, alphabet):
    """`text` with one byte replaced, inserted or deleted (deterministic in `rng`); also used by gen_schema_goldens."""
    s = list(text)
    op = rng.randrange(3)
    i = rng.randrange(len(s) + (op == 1))
    if op == 0 and s:
        s[min(i, len(s) - 1)] = rng.choice(alphabet)
    elif op == 1:
        s.insert(i, rng.choice(alphabet))
    elif s:
        del s[min(i, len(s) - 1)]
    return "".join(s)


def main():
    rng = random.Random(7)
    alphabet = '{}[]:,"\\ 0123456789.eE+-tfnulrsa\n\x01x'
    texts = list(VALID) + list(INVALID)
    for base in VALID:
        for _ in range(40):
            texts.append(mutate(base, rng, alphabet))
    seen, cases = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            cases.append(dict(text=t, object=is_object(t)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(reference="python json.loads(strict=True), NaN/Infinity refused; object = a dict", cases=cases),
                              indent=0, ensure_ascii=True) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} cases, {sum(c['object'] for c in cases)} objects")


if __name__ == "__main__":
    main()
