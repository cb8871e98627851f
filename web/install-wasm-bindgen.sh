#!/usr/bin/env bash
# Installs the wasm-bindgen CLI of exactly the version of the wasm-bindgen crate in Cargo.lock
# (its JS glue format changes between releases) into cargo's bin folder, unless it is already
# there: the project's prebuilt release binary when GitHub is reachable (seconds), else
# `cargo install` (5-11 minutes on 2 cores; without --locked, which fails on a dependency).
# The download is checked by running it: it must report the wanted version.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' "$root/Cargo.lock")
[ -n "$want" ] || { echo "Cargo.lock has no wasm-bindgen" >&2; exit 1; }
version() { "$1" --version 2>/dev/null | awk '{print $2}' || true; }
[ "$(version wasm-bindgen)" = "$want" ] && exit 0

bin="${CARGO_HOME:-$HOME/.cargo}/bin"
case "$(uname -sm)" in
  "Linux x86_64") triple=x86_64-unknown-linux-musl ;;
  "Linux aarch64") triple=aarch64-unknown-linux-gnu ;;
  "Darwin x86_64") triple=x86_64-apple-darwin ;;
  "Darwin arm64") triple=aarch64-apple-darwin ;;
  *) triple="" ;;
esac
if [ -n "$triple" ] && command -v curl >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  name="wasm-bindgen-$want-$triple"
  # The project moved from the rustwasm organization to its own; GitHub redirects either way.
  for base in https://github.com/wasm-bindgen/wasm-bindgen https://github.com/rustwasm/wasm-bindgen; do
    if curl -fsSL --retry 2 --connect-timeout 15 --max-time 180 "$base/releases/download/$want/$name.tar.gz" \
         | tar xz -C "$tmp" 2>/dev/null && [ "$(version "$tmp/$name/wasm-bindgen")" = "$want" ]; then
      mkdir -p "$bin"
      install -m 755 "$tmp/$name/wasm-bindgen" "$bin/wasm-bindgen"
      echo "== wasm-bindgen $want: prebuilt release binary from $base"
      exit 0
    fi
  done
  echo "== wasm-bindgen $want: no prebuilt binary could be fetched; building it with cargo install"
fi
cargo install wasm-bindgen-cli --version "$want"
