#!/usr/bin/env bash
# Install (idempotent), lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check maskgen tests benchmarks
.venv/bin/python -m pytest tests
