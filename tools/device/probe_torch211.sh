#!/usr/bin/env bash
# Builds the engine against libtorch 2.11.0 (the torch wheel the GPU
# machines carry: 2.11.0+cu130) instead of 2.1.0, and runs the tensor and
# model tests on this machine's CPU with it. It answers, without a GPU, the
# first question of moving to those machines: does gotch v0.9.1 (generated
# for 2.1.0) build, link and compute right against 2.11?
#
#   tools/device/probe_torch211.sh      (about 5 minutes the first time)
#
# What it does, all under $EMOFLOW_CACHE/torch211 (never in the repository):
#  1. downloads torch 2.11.0's Linux wheel (530 MB) and libcudart 13 from
#     PyPI, unpacks include/ and lib/;
#  2. libtorch_cpu.so needs libcupti.so.13 to load, which PyPI does not
#     serve for CUDA 13: it builds a stub of the 20 cupti functions
#     libtorch_cpu imports (the profiler's; never called here);
#  3. copies gotch v0.9.1, patches the three wrappers that no longer compile
#     (tools/device/patch_gotch_torch211.py says which and why) and links it
#     against 2.11's libtorch_cpu (C++11 ABI);
#  4. builds internal/tensor's and internal/model's tests through a go.work
#     of its own and runs them (the model tests need the reference venv of
#     scripts/setup.sh, as in ./task test).
# Not part of ./task test: it downloads half a gigabyte.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${EMOFLOW_CACHE:-$HOME/.cache/emoflow}
dir=$cache/torch211
lt=$dir/libtorch
gotch=$dir/gotch-v0.9.1-t211
log() { printf 'probe_torch211: %s\n' "$*" >&2; }

mkdir -p "$dir/stubs"
pipdl() {
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$@"
}
if [ ! -f "$lt/lib/libtorch_cpu.so" ]; then
	log "downloading torch 2.11.0 and libcudart 13"
	pipdl torch==2.11.0 'nvidia-cuda-runtime>=13,<14'
	rm -rf "$dir/x" "$lt" && mkdir -p "$lt"
	unzip -q -o "$dir"/torch-2.11.0-*.whl 'torch/include/*' 'torch/lib/*' -d "$dir/x"
	mv "$dir/x/torch/include" "$dir/x/torch/lib" "$lt/" && rm -rf "$dir/x"
	unzip -q -o -j "$dir"/nvidia_cuda_runtime-13*.whl 'nvidia/cu13/lib/libcudart.so.13' -d "$dir/stubs"
fi
if [ ! -f "$dir/stubs/libcupti.so.13" ]; then
	syms=$(nm -D --undefined-only "$lt/lib/libtorch_cpu.so" | awk '/@libcupti.so.13/ {sub(/@.*/, "", $2); print $2}' | sort -u)
	for s in $syms; do echo "int $s(void) { return 1; }"; done >"$dir/stubs/cupti_stub.c"
	{ echo "libcupti.so.13 { global:"; for s in $syms; do echo "  $s;"; done; echo " local: *; };"; } >"$dir/stubs/cupti.map"
	gcc -shared -fPIC -o "$dir/stubs/libcupti.so.13" -Wl,-soname,libcupti.so.13 \
		-Wl,--version-script="$dir/stubs/cupti.map" "$dir/stubs/cupti_stub.c"
	log "stub libcupti.so.13: $(echo "$syms" | wc -l) functions"
fi
if [ ! -f "$gotch/.patched" ]; then
	src=$(cd "$repo" && GOWORK=off go list -m -f '{{.Dir}}' github.com/sugarme/gotch)
	rm -rf "$gotch" && cp -r "$src" "$gotch" && chmod -R u+w "$gotch"
	python3 "$repo/tools/device/patch_gotch_torch211.py" "$gotch/libtch/torch_api_generated.cpp.h"
	cat >"$gotch/libtch/lib.go" <<GO
package libtch

// Written by emoflow's tools/device/probe_torch211.sh: libtorch 2.11.0
// (the PyPI wheel's, C++11 ABI), CPU libraries only.

// #cgo LDFLAGS: -lstdc++ -ltorch_cpu -lc10 -L$lt/lib -Wl,-rpath,$lt/lib -L$dir/stubs
// #cgo CFLAGS: -I\${SRCDIR} -O3 -Wall -Wno-unused-variable -Wno-deprecated-declarations -Wno-c++11-narrowing -g -Wno-sign-compare -Wno-unused-function
// #cgo CFLAGS: -D_GLIBCXX_USE_CXX11_ABI=1
// #cgo CXXFLAGS: -D_GLIBCXX_USE_CXX11_ABI=1 -std=c++17 -I\${SRCDIR} -O3 -I$lt/include -I$lt/include/torch/csrc/api/include
import "C"
GO
	touch "$gotch/.patched"
fi
printf 'go 1.26.0\n\nuse %s\nuse %s\n' "$repo" "$gotch" >"$dir/go.work"

export GOWORK=$dir/go.work GOEXPERIMENT=${GOEXPERIMENT:-jsonv2}
export LD_LIBRARY_PATH=$dir/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export EMOFLOW_PYTHON=${EMOFLOW_PYTHON:-$cache/venv/bin/python}
log "building and running internal/tensor and internal/model against libtorch 2.11 (first build: a few minutes)"
cd "$repo"
rc=0
go test -count=1 ./internal/tensor ./internal/model || rc=$?
exit $rc
