#!/usr/bin/env bash
# Build intel-npu-acceleration-library 1.4.0 into an environment of its own, offline except for
# the package registry (Linux, x86_64, Python 3.11). Its CMake would download an OpenVINO archive;
# instead we assemble that archive from the openvino wheel and point OV_LIBRARY_URL at it.
# Usage: scripts/build-npu-library.sh ENV_DIR   then set npu_library.python = "ENV_DIR/bin/python"
# PYTHON=python3.11 picks the interpreter the environment is made from (default: python3).
# On success ENV_DIR/aipc-npu-library.ok holds this script's checksum, so a caller (the test
# session) can tell a finished, current build from a partial or outdated one.
set -euo pipefail
ENV_DIR="$(realpath -m "${1:?usage: $0 ENV_DIR}")"
SCRIPT="$(realpath "$0")"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

rm -f "$ENV_DIR/aipc-npu-library.ok"
"$PYTHON" -m venv "$ENV_DIR"
PIP="$ENV_DIR/bin/pip"
# Its pins: transformers 4.4x (5.x fails on rotary_emb), neural-compressor 3.7.1 (+ six, which it
# imports undeclared), setuptools<81.
# OpenVINO 2024.4 because 2026.x renumbered element types ("Unsupported dtype" on every op).
"$PIP" install "openvino==2024.4.0" "torch==2.13.0" "transformers==4.46.3" "neural-compressor==3.7.1" \
    "setuptools<81" numpy wheel six

# Its setup.py runs cmake; use the registry's cmake package where the system has none.
if ! command -v cmake >/dev/null; then
    "$PIP" install cmake
    export PATH="$ENV_DIR/bin:$PATH"
fi

cd "$WORK"
"$PIP" download --no-deps --no-binary :all: intel-npu-acceleration-library==1.4.0 -d .
"$PIP" download --no-deps openvino==2024.4.0 -d .
tar xzf intel_npu_acceleration_library-1.4.0.tar.gz
mkdir wheel && (cd wheel && "$PYTHON" -m zipfile -e ../openvino-2024.4.0-*.whl .)

# The layout its CMakeLists expects from an OpenVINO archive.
mkdir -p ov/runtime/lib/intel64 ov/python ov/openvino
cp -r wheel/openvino/cmake ov/runtime/cmake
cp -r wheel/openvino/include wheel/openvino/libs ov/openvino/
cp -a wheel/openvino/libs/. ov/runtime/lib/intel64/
ln -s "$(cd ov/runtime/lib/intel64 && ls libopenvino.so.* | head -1)" ov/runtime/lib/intel64/libopenvino.so
cp -r wheel/openvino ov/python/openvino
(cd ov && tar czf "$WORK/openvino.tgz" .)
printf 'set(OV_LIBRARY_URL "file://%s/openvino.tgz" CACHE STRING "" FORCE)\n' "$WORK" > toolchain.cmake

cd intel_npu_acceleration_library-1.4.0
CMAKE_TOOLCHAIN_FILE="$WORK/toolchain.cmake" "$PIP" wheel --no-build-isolation --no-deps -w "$WORK/dist" .
"$PIP" install --no-deps "$WORK"/dist/intel_npu_acceleration_library-*.whl
# Check from outside the source tree, which would otherwise shadow the installed package.
cd "$WORK"
"$ENV_DIR/bin/python" -W ignore -c "import intel_npu_acceleration_library as l; from intel_npu_acceleration_library import backend; print('intel-npu-acceleration-library', l.__version__, 'NPU present:', backend.npu_available())"
sha256sum "$SCRIPT" | cut -d' ' -f1 > "$ENV_DIR/aipc-npu-library.ok"
