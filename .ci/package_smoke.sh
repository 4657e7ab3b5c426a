#!/usr/bin/env bash
# Packaging smoke test: build the wheel and the sdist, then install the wheel as users do, into
# fresh virtual environments one at a time (each removed before the next; pip's cache is
# shared; --no-compile: no .pyc for the thousands of files never imported here), and run
# the package in each:
#   headless  the wheel alone: napari, Qt, vispy, magicgui, matplotlib absent; CLI, demo, cohort
#   plugin    napari first, then a plain `pip install <wheel>` (what napari's plugin manager runs)
#   all       the wheel with the `all` extra (napari and its Qt binding come with it)
#   gpu       the `gpu` extra's dependency resolution (pip --dry-run; no GPU here)
# Usage: .ci/package_smoke.sh [PYTHON]   (default: python3; run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
start_all=$SECONDS

step() { echo "--- package smoke: $* ($((SECONDS - start_all)) s)"; }

fresh_venv() {  # fresh_venv NAME: a new venv at $work/NAME (the previous one removed)
  rm -rf "$work"/venv-*
  "$python" -m venv "$work/venv-$1"
  venv="$work/venv-$1"
}

step "build the wheel and the sdist"
"$python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel="$(ls "$work"/dist/*.whl)"
sdist="$(ls "$work"/dist/*.tar.gz)"
"$python" - "$wheel" "$sdist" <<'EOF'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
need = ["licenses/LICENSE", "napari_virtual_st/napari.yaml",
        "napari_virtual_st/bundled_models/cards/nsl_her2st.md",
        "napari_virtual_st/sample_data/CMU-1-Small-Region.svs"]
missing = [n for n in need if not any(name.endswith(n) for name in names)]
assert not missing, f"wheel lacks {missing}"
assert any(n.endswith("/LICENSE") for n in tarfile.open(sdist).getnames()), "sdist lacks LICENSE"
size = sum(i.file_size for i in zipfile.ZipFile(wheel).infolist())
print(f"wheel {wheel.rsplit('/', 1)[-1]}: {len(names)} files, {size / 1e6:.1f} MB unpacked")
EOF

step "headless: the wheel alone"
fresh_venv headless
"$venv/bin/pip" install -q --no-compile "$wheel"
"$venv/bin/pip" check
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md, importlib.util
gui = ["napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "vispy", "magicgui",
       "matplotlib", "torch"]
installed = [name for name in gui if importlib.util.find_spec(name) is not None]
assert not installed, f"a headless install pulled the GUI stack: {installed}"
try:
    import napari  # noqa: F401
except ImportError:
    print("headless: import napari fails, as it should")
else:
    raise SystemExit("napari is importable in the headless install")
EOF
(cd "$work" && "$venv/bin/virtual-st" models >/dev/null && "$venv/bin/virtual-st" runtime \
  && "$venv/bin/virtual-st" demo --out "$work/demo-headless" --quiet \
  && "$venv/bin/virtual-st" check "$work/demo-headless/CMU-1-Small-Region.vst.zarr" \
  && slide="$("$venv/bin/python" -c 'from napari_virtual_st.registry import sample_slide_path; print(sample_slide_path())')" \
  && model="$("$venv/bin/python" -c 'from napari_virtual_st.registry import default_model; print(default_model().path)')" \
  && "$venv/bin/virtual-st" cohort "$slide" --model "$model" --out "$work/cohort" --workers 1 --quiet)

step "plugin: napari first, then a plain pip install of the wheel (the plugin manager's way)"
fresh_venv plugin
"$venv/bin/pip" install -q --no-compile "napari[pyqt6]"
"$venv/bin/pip" install -q --no-compile "$wheel"
"$venv/bin/pip" check
"$venv/bin/npe2" validate napari-virtual-st --imports
"$venv/bin/python" -c "import importlib.util as u; assert u.find_spec('matplotlib') is None"
(cd "$work" && "$venv/bin/virtual-st" demo --out "$work/demo-plugin" --quiet)

step "all: the wheel with the all extra"
fresh_venv all
"$venv/bin/pip" install -q --no-compile "$wheel[all]"
"$venv/bin/pip" check
"$venv/bin/npe2" validate napari-virtual-st --imports
(cd "$work" && "$venv/bin/virtual-st" demo --out "$work/demo-all" --quiet)

step "gpu: the gpu extra resolves beside the CPU runtime (dry run)"
"$venv/bin/pip" install -q --no-compile --dry-run --report "$work/gpu.json" "$wheel[all,gpu]"
"$venv/bin/python" - "$work/gpu.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
names = {item["metadata"]["name"].lower() for item in report["install"]}
assert "onnxruntime-gpu" in names, f"the gpu extra does not bring onnxruntime-gpu: {names}"
print("gpu: would install", ", ".join(sorted(names)))
EOF
rm -rf "$work"/venv-*
step "done"
