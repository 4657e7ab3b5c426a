"""``virtual-st export``: from a real prediction to .h5ad and QuPath GeoJSON, errors in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_virtual_st.cli import main


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundled NSL model run by ``virtual-st predict`` on the real CMU-1-Small-Region."""
    from conftest import WSI_DIR

    slide = WSI_DIR / "CMU-1-Small-Region.svs"
    if not slide.exists():
        pytest.skip("real slide CMU-1-Small-Region.svs not available in ../shared/data/wsi")
    folder = tmp_path_factory.mktemp("cli_export")
    store = folder / "cmu.vst.zarr"
    argv = ["predict", str(slide), "--model", "nsl_her2st", "--out", str(store), "--quiet"]
    assert main(argv) == 0
    regions = folder / "regions.geojson"
    square = [[0, 0], [1110, 0], [1110, 2967], [0, 2967], [0, 0]]  # the left half
    regions.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [square]},
                        "properties": {
                            "objectType": "annotation",
                            "name": "left half",
                            "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        },
                    }
                ],
            }
        )
    )
    return store, regions


def test_export_writes_h5ad_and_geojson_of_the_spots_in_the_regions(
    predicted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anndata as ad

    store, regions = predicted
    h5ad, geojson = tmp_path / "out" / "cmu.h5ad", tmp_path / "out" / "cmu.geojson"
    argv = ["export", str(store), "--regions", str(regions), "--h5ad", str(h5ad)]
    assert main([*argv, "--geojson", str(geojson)]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = int(lines[0].split()[0])
    assert lines[0] == f"{n} spots × 250 genes in left half: {n}"
    assert lines[1:] == [f"written: {h5ad}", f"written: {geojson}"]
    adata = ad.read_h5ad(h5ad)
    assert adata.shape == (n, 250) and n > 20
    assert set(adata.obs["region"]) == {"left half"}
    assert adata.uns["virtual_st"]["model"]["file"] == "nsl_her2st.onnx"
    assert "hires" in adata.uns["spatial"]["CMU-1-Small-Region"]["images"]
    features = json.loads(geojson.read_text(encoding="utf-8"))["features"]
    detections = [f for f in features if f["properties"]["objectType"] == "detection"]
    assert len(detections) == n and len(features) == n + 1
    assert len(detections[0]["properties"]["measurements"]) == 250
    assert detections[0]["properties"]["classification"]["name"] == "Tumor"
    assert sorted(p.name for p in h5ad.parent.iterdir()) == ["cmu.geojson", "cmu.h5ad"]


def test_export_without_regions_takes_every_spot(
    predicted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = predicted
    out = tmp_path / "all.geojson"
    assert main(["export", str(store), "--geojson", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    n = int(first.split()[0])
    assert first == f"{n} spots × 250 genes"
    assert len(json.loads(out.read_text(encoding="utf-8"))["features"]) == n


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "say what to write: --h5ad OUT.h5ad, --geojson OUT.geojson, or both"),
        (["--regions", "{regions_bad}", "--h5ad", "{out}"], "is not a readable GeoJSON"),
        (["--regions", "{regions_far}", "--geojson", "{out}"], "no predicted spot lies inside"),
        (["--h5ad", "{out}", "--slide", "{tiny}"], "is not the slide"),
    ],
)
def test_export_errors_are_one_line_exit_2_and_write_nothing(
    predicted: tuple[Path, Path],
    tmp_path: Path,
    tiny_svs: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    store, _ = predicted
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    far = tmp_path / "far.geojson"
    far.write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[-9, -9], [-5, -9], [-5, -5], [-9, -9]]]})
    )
    out = tmp_path / "out.file"
    values = {"regions_bad": bad, "regions_far": far, "out": out, "tiny": tiny_svs}
    argv = ["export", str(store), *(a.format(**values) for a in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("virtual-st: error: ") and message in err
    assert err.count("\n") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.geojson", "far.geojson"]
