#!/usr/bin/env bash
# The whole test suite: unit tests, notebook/library sync check, strict nbval over every notebook.
# Expects .venv from `bash .ci/setup` (the README's test command runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

echo "== 1/3 notebooks are fully executed, library in sync with notebooks"
python tests/check_notebooks.py

echo "== 2/3 unit tests + 3/3 strict nbval"
# One process per core (pytest-xdist), each test file or notebook whole on one worker, one thread each:
# most of the suite is single-threaded (kernel start-up, small ops), and two threads per worker on a
# 2-core machine double the CPU time spent without finishing sooner. Stored outputs hold at any thread count.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
pytest -q -p no:cacheprovider -n auto --maxprocesses 8 --dist loadfile tests notebooks --nbval \
    --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-current-env "$@"
