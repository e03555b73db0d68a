#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created conda env (`--sdm conda`), from the workflow's working
# directory: it installs the lossablation package itself (not on PyPI) from the repository, so that the jobs can
# import it. The repository is the working directory (run snakemake from its root) or $LOSSABLATION_SOURCE.
# Not editable: the env keeps the code of the moment it was created (recreate it after updating the clone).
set -euo pipefail
root="${LOSSABLATION_SOURCE:-$PWD}"
if [ ! -f "$root/pyproject.toml" ] || ! grep -q '^name = "lossablation"' "$root/pyproject.toml"; then
    echo "lossablation post-deploy: $root is not the lossablation repository: run snakemake from its root or set LOSSABLATION_SOURCE" >&2
    exit 2
fi
python -m pip install --no-deps ${LOSSABLATION_PIP_OPTIONS:-} "$root"
