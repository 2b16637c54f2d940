#!/usr/bin/env bash
# env/emoji.sh fetch DEST | render DEST
#
# The default catalogue's images: the same emoji drawn by four vendors, from npm packages.
#   fetch   (needs npm)           packs each package and unpacks only the files used into DEST/<vendor>/
#   render  (needs rsvg-convert)  renders the SVG vendors into DEST/<vendor>/png/ at 64 px, the
#                                 resolution of the PNG vendors' images, keeping the alpha channel
# Licences: emoji-datasource-google (Noto Emoji: Apache-2.0), emoji-datasource-twitter (Twemoji:
# CC-BY-4.0), openmoji (CC-BY-SA-4.0), fluentui-emoji (Microsoft's Fluent Emoji: MIT).
set -euo pipefail

# vendor  package@version  files kept  where the images are inside the package
PACKAGES="google emoji-datasource-google@16.0.0 package/emoji.json package/img/google/64
twitter emoji-datasource-twitter@16.0.0 package/img/twitter/64
openmoji openmoji@17.0.0 package/data/openmoji.csv package/color/svg
fluent fluentui-emoji@1.3.0 package/icons/modern"
SIZE=64

fetch() {
  local dest=$1 tmp vendor pkg files
  command -v npm >/dev/null || { echo "env/emoji.sh: npm is needed to fetch the emoji packages" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  while read -r vendor pkg files; do
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null) || { echo "env/emoji.sh: npm pack $pkg failed" >&2; exit 1; }
    mkdir -p "$dest/$vendor"
    # shellcheck disable=SC2086  # files is a list
    tar xzf "$tmp"/*.tgz -C "$dest/$vendor" $files
    rm -f "$tmp"/*.tgz
    echo "$pkg" > "$dest/$vendor/PACKAGE"
  done <<< "$PACKAGES"
}

render() {
  local dest=$1 dir
  command -v rsvg-convert >/dev/null || { echo "env/emoji.sh: rsvg-convert (librsvg2-bin) is needed" >&2; exit 1; }
  for dir in "$dest"/openmoji/package/color/svg "$dest"/fluent/package/icons/modern; do
    mkdir -p "$dir/png"
    find "$dir" -maxdepth 1 -name '*.svg' -printf '%f\n' \
      | xargs -P "$(nproc)" -I{} rsvg-convert -w "$SIZE" -h "$SIZE" -a -o "$dir/png/{}.png" "$dir/{}"
  done
}

case "${1:-}" in
  fetch|render) "$1" "${2:?DEST}" ;;
  *) echo "usage: env/emoji.sh fetch|render DEST" >&2; exit 2 ;;
esac
