#!/usr/bin/env bash
# Builds the browser page into web/pkg (gitignored): the hoa library compiled to wasm32 as a
# cdylib, then wasm-bindgen's JS glue (--target web). Also writes files.json, the list of files
# the page downloads, into every model folder it finds (weights/*/ and the test fixture
# tests/fixtures/pipeline_tiny); `web/build.sh --manifest DIR` writes one for another folder.
#
# Needs the wasm32 target (rustup target add wasm32-unknown-unknown) and the wasm-bindgen CLI
# of exactly the version of the wasm-bindgen crate in Cargo.lock; when it is missing this
# script installs it (web/install-wasm-bindgen.sh: a prebuilt release, else `cargo install`).
#
# Then serve the repository root and open http://127.0.0.1:8000/web/ :
#     python3 -m http.server -b 127.0.0.1 8000        (or: node web/serve.mjs 8000)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# files.json: model_index.json, hoa.json (the model's defaults) and every file in the
# component folders (and in the prompt rewriter folder hoa.json names), as paths relative to
# the model folder.
manifest() {
  local dir="${1%/}"
  [ -f "$dir/model_index.json" ] || { echo "$dir has no model_index.json: not a diffusers folder" >&2; return 1; }
  (cd "$dir" && { echo model_index.json; if [ -f hoa.json ]; then echo hoa.json; fi; find . -mindepth 2 -type f ! -name '.*' | sed 's|^\./||'; } \
    | LC_ALL=C sort | node -e '
      // Only the components model_index.json lists (and hoa'"'"'s consistency_decoder and the
      // rewriter hoa.json names), as the download plan fetches them: a folder may hold more (a
      // safety checker, a rewriter hoa.json does not name).
      const fs = require("fs");
      const index = JSON.parse(fs.readFileSync("model_index.json", "utf8"));
      const hoa = fs.existsSync("hoa.json") ? JSON.parse(fs.readFileSync("hoa.json", "utf8")) : {};
      const listed = (v) => Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === "string");
      const keep = new Set(["consistency_decoder", ...Object.keys(index).filter((k) => listed(index[k]))]);
      const rewriter = typeof hoa.rewriter === "string" ? hoa.rewriter.replace(/\/*$/, "/") : null;
      const lines = fs.readFileSync(0, "utf8").split("\n").filter(Boolean)
        .filter((p) => !p.includes("/") || keep.has(p.split("/")[0]) || (rewriter && p.startsWith(rewriter)));
      process.stdout.write(JSON.stringify(lines, null, 1) + "\n");' > files.json)
  echo "wrote $dir/files.json ($(grep -c '"' "$dir/files.json") files)"
}

if [ "${1:-}" = "--manifest" ]; then
  shift
  for d in "$@"; do manifest "$d"; done
  exit 0
fi

bash web/install-wasm-bindgen.sh
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

echo "== cargo: hoa (lib, no CLI features) for wasm32 as a cdylib"
# `cargo rustc --crate-type cdylib` instead of a cdylib in [lib]: native builds stay rlib-only.
cargo rustc --release --lib --no-default-features --target wasm32-unknown-unknown --crate-type cdylib
target="${CARGO_TARGET_DIR:-target}"
echo "== wasm-bindgen -> web/pkg"
rm -rf web/pkg
wasm-bindgen --target web --no-typescript --out-dir web/pkg "$target/wasm32-unknown-unknown/release/hoa.wasm"
ls -l web/pkg

for d in tests/fixtures/pipeline_tiny weights/*/; do
  if [ -f "$d/model_index.json" ]; then manifest "$d"; fi
done
echo "== done: serve the repository root (python3 -m http.server -b 127.0.0.1 8000) and open http://127.0.0.1:8000/web/"
