#!/usr/bin/env bash
# lint-imports (the layering contract in pyproject.toml) on a view of the source folders as one
# `autosp` package: grimp looks for autosp.<sub> inside the autosp folder, while setuptools'
# package-dir maps each top-level folder to its package.
set -euo pipefail
cd "$(dirname "$0")/.."
view=build/import-view/autosp
rm -rf build/import-view
mkdir -p "$view"
for f in compiler/*.py; do ln -s "$PWD/$f" "$view/"; done
for d in common ir passes runtime frontends tools; do ln -s "$PWD/$d" "$view/$d"; done
PYTHONPATH="$PWD/build/import-view" .venv/bin/lint-imports
