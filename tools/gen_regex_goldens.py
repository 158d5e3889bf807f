#!/usr/bin/env python3
"""Regular expressions and texts labelled by Python's re (fullmatch, re.ASCII: \\d \\w \\s as ECMAScript and JSON Schema
define them), for the regex grammar (Tests/EngineTests/StructuredOutputTests.swift):

  Tests/Fixtures/json/regex.json   {reference, cases: [{pattern, texts: [{text, match}]}], refused: [...]}

Texts: hand-written ones per pattern, then strings over a small alphabet and deterministic mutations of the
matching ones (gen_json_goldens.mutate). `refused` lists patterns the grammar must refuse (backreferences,
lookarounds, word boundaries, inline flags, …).
Usage: python3 tools/gen_regex_goldens.py
"""
import json
import random
import re
from pathlib import Path

from gen_json_goldens import mutate

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests/Fixtures/json/regex.json"

CASES = [
    (r"\d{3}-\d{4}", ["555-1234", "55-1234", "555-12345", "abc-defg", "555 1234"]),
    (r"^(yes|no|maybe so)$", ["yes", "no", "maybe so", "maybe", "yesno", ""]),
    (r"[A-Z][a-z]+( [A-Z][a-z]+)*", ["Ada", "Ada Lovelace", "ada", "Ada lovelace", "A", "Ada  Lovelace"]),
    (r"\w+@\w+\.(com|org)", ["a@b.com", "x_1@y2.org", "a@b.net", "@b.com", "a@.com"]),
    (r"(?:ab)+c?", ["ab", "abab", "ababc", "abc", "a", "abcab", ""]),
    (r"a{2,4}b{0,1}", ["aa", "aaa", "aaaa", "aaaaa", "aab", "aabb", "a"]),
    (r"[^\s,]+(,[^\s,]+)*", ["a,b,c", "a", "a,,b", "a b", ",a", "é,ü"]),
    (r"(?P<year>\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", ["2024-02-29", "2024-13-01", "2024-00-10", "2024-1-01", "2024-12-31"]),
    (r"[a-fA-F0-9]{8}-[a-fA-F0-9]{4}", ["deadbeef-CAFE", "deadbeef-cafg", "deadbee-cafe"]),
    (r"\S+\s\S+", ["hello world", "hello  world", "hello\tworld", "hi", "日本 語"]),
    (r"[àé-ë]x.", ["àxa", "éx\n", "êxé", "ax!", "ëx"]),
    (r"\D\W?\.\*", ["a.*", "a!.*", "1.*", "aa.*", "a\\.*"]),
    (r"\x41\u00e9[\-\]]", ["Aé-", "Aé]", "Aé\\", "Ae-"]),
    (r"(a|)+b{,2}", ["b", "ab", "aab", "abbb", "", "ba"]),
    (r"x{3}y{2,}", ["xxxyy", "xxxyyyy", "xxyy", "xxxy"]),
    (r"[\d\s]+|[^\d\s]+", ["1 2", "ab", "a1", "  ", "1a"]),
    (r".{0,3}!", ["!", "abc!", "abcd!", "a\n!", "é🙂!"]),
    (r"a{", ["a{", "a", "a{{"]),
]

REFUSED = [r"(a)\1", r"a(?=b)", r"(?<!a)b", r"\bword\b", r"(?i)abc", r"a**", r"a{5,2}", r"[z-a]", r"(ab", r"ab)", r"*a",
           r"a{2000}", r"[[:alpha:]]", r"a^b", r"a$b", r"[^é]"]

ALPHABET = "ab-1.@ _,:xyAZ09!\té"


def main():
    rng = random.Random(5)
    cases = []
    for pattern, hand in CASES:
        rx = re.compile(pattern, re.ASCII)
        texts, seen = [], set()

        def add(t):
            if t not in seen and "\x00" not in t:
                seen.add(t)
                texts.append(dict(text=t, match=rx.fullmatch(t) is not None))
        for t in hand:
            add(t)
        for _ in range(60):
            add("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8))))
        matching = [t["text"] for t in texts if t["match"]]
        for t in filter(None, matching):
            for _ in range(8):
                add(mutate(t, rng, ALPHABET))
        cases.append(dict(pattern=pattern, texts=texts))
    for p in REFUSED:
        try:
            re.compile(p)
        except re.error:
            pass
    out = dict(reference=f"Python {'.'.join(map(str, __import__('sys').version_info[:3]))} re.fullmatch with re.ASCII; tools/gen_regex_goldens.py",
               cases=cases, refused=REFUSED)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{OUT}: {len(cases)} patterns, {sum(len(c['texts']) for c in cases)} texts "
          f"({sum(t['match'] for c in cases for t in c['texts'])} matching), {len(REFUSED)} refused")


if __name__ == "__main__":
    main()
