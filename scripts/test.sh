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
# The Helm chart's test is a module of its own (deploy/helm, in go.work),
# which ./... does not reach; without -race: it only renders templates.
echo "test: go vet and go test ./deploy/helm/" >&2
go vet ./deploy/helm/...
go test -count=1 -timeout 10m "$@" ./deploy/helm/...
# Fuzzing: every fuzz target (func FuzzXxx in a _test.go file) runs for
# EMOFLOW_FUZZ_TIME (default 3s; 0 skips this stage), one package and one
# target per go test, as -fuzz requires. The run above has replayed their
# seed corpora (testdata/fuzz). A finding fails the run and go test writes
# the input to the package's testdata/fuzz/FuzzXxx/: commit it with the fix
# as a regression seed. -fuzzminimizetime keeps the short runs fuzzing
# rather than minimizing each new input.
fuzztime=${EMOFLOW_FUZZ_TIME:-3s}
if [[ $fuzztime != 0 ]]; then
	mapfile -t targets < <(grep -rHoE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' cmd internal | sort)
	echo "test: go test -fuzz, ${#targets[@]} targets for $fuzztime each" >&2
	for target in "${targets[@]}"; do
		file=${target%%:*}
		echo "test: ${target##*func } in ./${file%/*}" >&2
		# Go's fuzzing coordinator can give up on a busy worker at the
		# end of a short run ("context deadline exceeded", no input
		# written): that says nothing about the code, so the target
		# runs again, up to three runs (on a loaded 2-core machine two
		# targets of 17 did it in one CI run). A real finding writes its
		# input and fails at once.
		log=$(mktemp)
		for run in 1 2 3; do
			if go test -run='^$' -fuzz="^${target##*func }\$" -fuzztime="$fuzztime" -fuzzminimizetime=1s "./${file%/*}" 2>&1 | tee "$log"; then
				break
			fi
			if [[ $run == 3 ]] || ! grep -q 'context deadline exceeded' "$log" || grep -q 'Failing input written' "$log"; then
				rm -f "$log"
				exit 1
			fi
			echo "test: ${target##*func }: the fuzzing engine timed out a worker; running it again" >&2
		done
		rm -f "$log"
	done
fi
