#!/usr/bin/env bash
# Debian's chromium and chromium-driver, for the test that renders report.html in a browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium/chromedriver are missing and cannot be installed here (needs root and apt-get);" \
       "the browser test will be skipped (CI fails it instead)." >&2
  exit 0
fi
echo "installing chromium and chromium-driver (Debian packages) for the report's browser test"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
