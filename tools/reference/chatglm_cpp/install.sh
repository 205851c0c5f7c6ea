#!/usr/bin/env bash
# Builds chatglm.cpp 0.4.2 (PyPI sdist chatglm-cpp==0.4.2) for this CPU and
# installs it into the reference virtual environment, with emoflow's scoring
# module (score.cpp). Only the engine benchmark needs it (emobench engine
# runs this when its chatglm.cpp side is on); ./task test never does.
#
# The build is cached: a second run with the same sources, CPU and venv
# returns at once. It takes several minutes on two cores (abseil, re2,
# sentencepiece, ggml); CHATGLM_CPP_JOBS (default 2) sets the parallelism.
# ggml is compiled with -march=native: chatglm.cpp's ggml on Linux would
# otherwise stop at AVX2 whatever the CPU has.
#
#   tools/reference/chatglm_cpp/install.sh [PYTHON]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${EMOFLOW_CACHE:-$HOME/.cache/emoflow}
python=${1:-${EMOFLOW_PYTHON:-$cache/venv/bin/python}}
version=0.4.2
root=$cache/chatglm-cpp-$version
jobs=${CHATGLM_CPP_JOBS:-2}

log() { printf 'chatglm.cpp install: %s\n' "$*" >&2; }

site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
cpu=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)
key=$(cat "$here/CMakeLists.txt" "$here/score.cpp" | sha256sum | cut -c1-12)-$cpu
stamp=$site/emoflow_chatglm_score.stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
	exit 0
fi

missing=()
for tool in cmake c++ cc make; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null; then
	log "installing cmake g++ make (missing: ${missing[*]})"
	sudo=()
	[ "$(id -u)" = 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq &&
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake g++ make >/dev/null ||
		{ log "could not install cmake g++ make"; exit 1; }
fi
for tool in cmake c++ cc make; do
	command -v "$tool" >/dev/null || { log "needs $tool (Debian: apt-get install cmake g++ make)"; exit 1; }
done

sdist=$root/chatglm_cpp-$version.tar.gz
if [ ! -f "$sdist" ]; then
	log "downloading the chatglm-cpp==$version sdist from PyPI"
	mkdir -p "$root"
	"$python" -m pip download -q --no-deps --no-binary :all: -d "$root" "chatglm-cpp==$version"
fi
src=$root/chatglm_cpp-$version
[ -f "$src/chatglm.h" ] || tar -xzf "$sdist" -C "$root"

build=$root/build-$cpu
log "building chatglm.cpp $version with $jobs jobs into $build (several minutes)"
flags="-march=native"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCHATGLM_CPP_SOURCE="$src" \
	-DPYTHON_EXECUTABLE="$python" -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >"$build.log" 2>&1 ||
	{ tail -30 "$build.log" >&2; exit 1; }
cmake --build "$build" -j "$jobs" --target _C emoflow_chatglm_score >>"$build.log" 2>&1 ||
	{ tail -30 "$build.log" >&2; exit 1; }

# The package as pip would install it: its Python files and the _C module.
mkdir -p "$site/chatglm_cpp"
cp "$src"/chatglm_cpp/*.py "$src"/chatglm_cpp/*.pyi "$site/chatglm_cpp/"
cp "$build"/chatglm/lib/_C*.so "$site/chatglm_cpp/" 2>/dev/null || find "$build" -name '_C*.so' -exec cp {} "$site/chatglm_cpp/" \;
find "$build" -name 'emoflow_chatglm_score*.so' -exec cp {} "$site/" \;
"$python" -c 'import chatglm_cpp, emoflow_chatglm_score; assert chatglm_cpp.__version__ == "'$version'"'
echo "$key" >"$stamp"
log "installed into $site"
