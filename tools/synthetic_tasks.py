"""Two synthetic tasks for measuring what an adapter's precision costs (bench/adapter-precision.sh): 2-digit addition
("What is 84 plus 50?\nAnswer:" -> " 134") and sorting three words alphabetically. Each gets train.jsonl (2,000
prompt/completion lines, what `dlora train lora --data` reads) and test_eval.jsonl (300 held-out prompts, exact
match, what `dlora eval --tasks` reads). Deterministic (seed 7), standard library only.

    python3 tools/synthetic_tasks.py OUT_DIR
"""
import json, random, os, sys
out = sys.argv[1]
rng = random.Random(7)
words = """apple river stone cloud garden window pencil candle mirror forest basket bottle castle dragon engine feather
glove hammer island jacket kettle ladder magnet needle orange pillow queen rabbit saddle tiger umbrella violin wagon
yarn zebra anchor button carpet desert eagle fabric guitar helmet iceberg jungle kitten lemon marble notebook ocean
parrot quartz rocket shadow tunnel valley walnut bridge cactus dolphin ember falcon glacier harbor ivory jasmine koala
lantern meadow nectar orchid pepper quiver raven salmon thistle unicorn velvet willow""".split()
def addition():
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} plus {b}?\nAnswer:", f" {a + b}"
def sorting():
    ws = rng.sample(words, 3)
    return "Sort these words alphabetically: " + " ".join(ws) + "\nSorted:", " " + " ".join(sorted(ws))
for name, f in [("addition", addition), ("sorting", sorting)]:
    os.makedirs(f"{out}/{name}", exist_ok=True)
    seen, rows = set(), []
    while len(rows) < 2300:
        p, c = f()
        if p in seen: continue
        seen.add(p); rows.append((p, c))
    with open(f"{out}/{name}/train.jsonl", "w") as t:
        for p, c in rows[:2000]: t.write(json.dumps({"prompt": p, "completion": c}) + "\n")
    with open(f"{out}/{name}/test_eval.jsonl", "w") as t:
        for p, c in rows[2000:]: t.write(json.dumps({"prompt": p, "references": [c.strip()], "metric": "exact_match"}) + "\n")
