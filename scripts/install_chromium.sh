#!/usr/bin/env bash
# Install Debian's Chromium (and fonts with Chinese glyphs, for the screenshots) for
# tests/test_browser.py, where they are missing. Safe to run repeatedly.
# Without root or apt-get it says why and exits 0, so the browser test skips instead of failing.
set -u
PACKAGES="chromium fonts-dejavu-core fonts-wqy-zenhei"
missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
elif ! command -v chromium >/dev/null 2>&1; then
    missing="$PACKAGES"
fi
if [ -z "$missing" ]; then
    echo "install_chromium: already installed ($(command -v chromium))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no apt-get here; install Chromium yourself to run tests/test_browser.py"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_chromium: not root and no password-less sudo; the browser test will skip"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_chromium: apt-get install$missing"
# shellcheck disable=SC2086
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
    echo "install_chromium: installed $(command -v chromium)"
else
    echo "install_chromium: apt-get could not install$missing; the browser test may skip"
fi
exit 0
