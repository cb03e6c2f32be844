#!/usr/bin/env bash
# CI only (root, Debian): the tools of the `browser` and `editor` tests, which skip without
# them on a user's machine but fail without them in CI (CI=true). Chromium renders report.html
# (tests/eval/test_report_browser.py); yaml-language-server checks the schemas
# (tests/test_editor.py). Users' setup (scripts/setup.sh) needs neither, nor root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
npm install -g yaml-language-server
chromium --version
command -v yaml-language-server
