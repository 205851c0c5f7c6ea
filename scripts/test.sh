#!/usr/bin/env bash
# Runs go vet and every test (unit and integration, race detector on) against
# the local services, which must be up (scripts/services.sh start). Extra
# arguments go to "go test" (for example -run Pattern).
# Integration tests fail instead of skipping when a service is missing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
set -a
# shellcheck disable=SC1090
source <(scripts/services.sh env)
set +a
export EMOFLOW_TEST_REQUIRE_SERVICES=1
export EMOFLOW_PYTHON=${EMOFLOW_PYTHON:-${EMOFLOW_CACHE:-$HOME/.cache/emoflow}/venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$(nproc)}
echo "test: go vet ./..." >&2
go vet ./...
echo "test: go test -race ./..." >&2
go test -race -count=1 -timeout 45m "$@" ./...
