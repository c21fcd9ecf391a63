#!/usr/bin/env bash
# The whole test suite: unit tests, notebook/library sync check, strict nbval over every notebook.
# Expects .venv from `bash .ci/setup` (the README's test command runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

echo "== 1/3 notebooks are fully executed, library in sync with notebooks"
python tests/check_notebooks.py

echo "== 2/3 unit tests + 3/3 strict nbval"
pytest -q -p no:cacheprovider tests notebooks --nbval \
    --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env "$@"
