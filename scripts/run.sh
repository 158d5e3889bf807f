#!/usr/bin/env bash
# The main job: set up what is missing, build, and run dlora on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product dlora >&2
exec .build/release/dlora generate --chat "${DLORA_PROMPT:-Explain in two sentences why the sky is blue.}" --max-tokens "${DLORA_MAX_TOKENS:-128}" --temperature 0 "$@"
