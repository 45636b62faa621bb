#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for tests/test_browser.py, where it is missing.
# Safe to run repeatedly; does nothing when a chromium binary is already on PATH.
# Without root or apt-get it prints why and exits 0, so the browser test skips instead of failing.
set -u
for b in chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then
        echo "install_chromium: $b already installed ($(command -v "$b"))"
        exit 0
    fi
done
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
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
    echo "install_chromium: installed $(command -v chromium)"
else
    echo "install_chromium: apt-get could not install chromium; the browser test will skip"
fi
exit 0
