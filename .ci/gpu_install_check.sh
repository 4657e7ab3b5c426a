#!/usr/bin/env bash
# The GPU install path, end to end on any Linux machine (no GPU needed: onnxruntime-gpu lists
# its CUDA provider whether or not a GPU is present). Not part of .ci/run: it downloads
# onnxruntime-gpu (~250 MB). Checks, with `pip check` clean at every step:
#   1. `pip install "<wheel>[gpu]"`, then the line `virtual-st runtime` prints, puts the GPU build
#      in place;
#   2. it survives `pip install -U` to a newer release of the package, with and without [gpu];
#   3. when a pip command writes the CPU files back, `virtual-st predict` and `virtual-st
#      runtime` say so and the line they print restores the GPU build.
# Usage: .ci/gpu_install_check.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

# two releases of the package: this one, and the same with the next patch version
"$python" -m build --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1
mkdir "$work/next" && git archive HEAD | tar -x -C "$work/next"
sed -i -E 's/__version__ = "([0-9]+)\.([0-9]+)\.([0-9]+)"/__version__ = "\1.\2.9\3"/' \
  "$work/next/src/napari_virtual_st/_version.py"
"$python" -m build --wheel --outdir "$work/dist-next" "$work/next" >>"$work/build.log" 2>&1
wheel="$(ls "$work"/dist/*.whl)"
next="$(ls "$work"/dist-next/*.whl)"

"$python" -m venv "$work/venv"
bin="$work/venv/bin"
cuda() { "$bin/python" -c 'import onnxruntime as o; print("CUDAExecutionProvider" in o.get_available_providers())'; }
todo() { "$bin/virtual-st" runtime | sed -n 's/^to do:.*run: //p'; }

echo "--- 1. install with [gpu], then the line virtual-st runtime prints"
"$bin/pip" install -q "$wheel[gpu]"
"$bin/pip" check
echo "GPU build on disk after the install: $(cuda)"
fix="$(todo)"
if [ -n "$fix" ]; then echo "running: $fix"; (source "$bin/activate" && eval "$fix"); fi
"$bin/pip" check
[ "$(cuda)" = True ] || { echo "FAIL: GPU build not in place"; exit 1; }
[ -z "$(todo)" ] || { echo "FAIL: runtime still has advice"; exit 1; }

echo "--- 2. pip install -U to a newer release, without and with [gpu]"
"$bin/pip" install -q -U "$next"
"$bin/pip" check
[ "$(cuda)" = True ] || { echo "FAIL: pip install -U put the CPU build back"; exit 1; }
"$bin/pip" install -q -U "$next[gpu]"
"$bin/pip" check
[ "$(cuda)" = True ] || { echo "FAIL: pip install -U [gpu] put the CPU build back"; exit 1; }
"$bin/python" -c 'import napari_virtual_st as n; print("upgraded to", n.__version__)'

echo "--- 3. a pip command writes the CPU files back: noticed, and the printed line restores them"
cpu="$("$bin/python" -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')"
"$bin/pip" install -q --force-reinstall --no-deps "onnxruntime==$cpu"
[ "$(cuda)" = False ] || { echo "FAIL: could not simulate the CPU files on top"; exit 1; }
slide="$("$bin/python" -c 'from napari_virtual_st.registry import sample_slide_path; print(sample_slide_path())')"
(cd "$work" && "$bin/virtual-st" predict "$slide" --quiet --out "$work/p.vst.zarr" 2>"$work/predict.err")
grep "onnxruntime-gpu .* is installed but the CPU onnxruntime's files" "$work/predict.err"
fix="$(todo)"
echo "running: $fix"
(source "$bin/activate" && eval "$fix")
"$bin/pip" check
[ "$(cuda)" = True ] || { echo "FAIL: the printed line did not restore the GPU build"; exit 1; }
echo "GPU install path: all checks passed"
