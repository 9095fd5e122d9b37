#!/usr/bin/env bash
# Puts a headless Chromium into the project's venv, for the test that loads the HTML
# reports in a real browser and takes their screenshots (tests/e2e/test_report_pages.py).
# Debian's chromium and the few libraries it needs that a server usually lacks are fetched
# with `apt-get download` (no root, nothing installed system-wide) and unpacked into
# $VENV/tools/chromium; $VENV/bin/microte-chromium runs it with those libraries. Later
# runs only check it. Nothing outside the project's folder changes.
#
# Usage: scripts/install-browser.sh        (exit 1 if it could not be installed)
# Env:   MICROTE_VENV (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MICROTE_VENV:-.venv}
TOOLS=$VENV/tools/chromium
WRAPPER=$VENV/bin/microte-chromium
PACKAGES=(chromium chromium-common libopenh264-7 libdouble-conversion3 libharfbuzz-subset0 libpulse0 libflac12
          libopus0 libxnvctrl0 libminizip1 libopenjp2-7 libogg0 libasyncns0 libsndfile1 libmp3lame0 libmpg123-0
          libvorbis0a libvorbisenc2)

works() { [[ -x $WRAPPER ]] && "$WRAPPER" --headless=new --no-sandbox --version >/dev/null 2>&1; }
if works; then echo "ok   chromium ($WRAPPER)"; exit 0; fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "MISSING chromium: needs Debian's apt-get and dpkg-deb to fetch it into $TOOLS" >&2; exit 1
fi
echo "...  fetching chromium and ${#PACKAGES[@]} packages with apt-get download into $TOOLS (no root, nothing installed)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download -qq "${PACKAGES[@]}" >/dev/null 2>&1); then
  echo "MISSING chromium: apt-get download ${PACKAGES[*]} failed (as root, run apt-get update first)" >&2; exit 1
fi
rm -rf "$TOOLS" && mkdir -p "$TOOLS"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$TOOLS"; done
root=$(cd "$TOOLS" && pwd)
lib=$root/usr/lib/x86_64-linux-gnu
cat > "$WRAPPER" <<WRAP
#!/usr/bin/env bash
# Chromium unpacked by scripts/install-browser.sh, with the libraries it brought.
export LD_LIBRARY_PATH="$lib:$lib/pulseaudio:$root/usr/lib/chromium\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$root/usr/lib/chromium/chromium" "\$@"
WRAP
chmod 0755 "$WRAPPER"
if works; then echo "ok   chromium ($WRAPPER)"; else echo "MISSING chromium: $WRAPPER does not start" >&2; exit 1; fi
