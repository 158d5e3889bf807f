#!/usr/bin/env bash
# The main job: set up what is missing, build, and serve the default model over the OpenAI-compatible API
# on 127.0.0.1:8000 (adapters from $DLORA_ADAPTER_ROOT when set). Extra arguments go to `dlora serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product dlora >&2
args=()
if [ -n "${DLORA_ADAPTER_ROOT:-}" ]; then args+=(--adapters "$DLORA_ADAPTER_ROOT"); fi
exec .build/release/dlora serve "${args[@]}" "$@"
