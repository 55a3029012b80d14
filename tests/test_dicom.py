"""DICOM whole-slide images: a real DICOM WSI made from the demo's pyramidal TIFF by wsidicomizer, read through
OpenSlide's DICOM backend (pixels, resolution from PixelSpacing), analysed end to end, and found by batch."""

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest

from micromets.batch.ident import slide_content_id
from micromets.batch.run import discover_inputs, run_batch
from micromets.slide import open_slide
from test_analyze import check_slide_outputs, micromets

REPO = Path(__file__).resolve().parents[1]
NODE1_TIFF = REPO / "src" / "micromets" / "data" / "demo" / "slides" / "node1.tiff"


@pytest.fixture(scope="module")
def dicom_node1(tmp_path_factory) -> Path:
    """node1.tiff converted to a DICOM WSI folder (every pyramid level one instance, uncompressed so its pixels are
    the TIFF's exactly); 0.5 s."""
    from wsidicom.codec import NumpySettings
    from wsidicomizer import WsiDicomizer

    folder = tmp_path_factory.mktemp("dicom") / "node1_dicom"
    WsiDicomizer.convert(NODE1_TIFF, folder, encoding=NumpySettings(), include_label=False,
                         include_overview=False, include_thumbnail=False)
    return folder


def test_dicom_slide_opens_from_folder_or_file_with_the_tiffs_pixels_and_mpp(dicom_node1):
    instances = sorted(dicom_node1.glob("*.dcm"))
    assert len(instances) == 5  # one per level of node1.tiff
    with open_slide(NODE1_TIFF) as tiff:
        for named in (dicom_node1, instances[-1]):
            with open_slide(named) as dicom:
                assert dicom.properties[openslide.PROPERTY_NAME_VENDOR] == "dicom"
                assert dicom.path == dicom_node1 and dicom.slide_id == "node1_dicom"
                assert dicom.mpp_source == "dicom.PixelSpacing"
                assert dicom.l0_mpp == pytest.approx(tiff.l0_mpp, abs=1e-6) == pytest.approx(0.486)
                assert dicom.level_dimensions == tiff.level_dimensions
                for level in range(3):
                    assert np.array_equal(dicom.read_region(1000, 800, level, 300, 200),
                                          tiff.read_region(1000, 800, level, 300, 200))


def test_analyze_dicom_slide_end_to_end_gives_the_tiffs_node_class(dicom_node1, tmp_path):
    out = tmp_path / "out"
    done = micromets("analyze", sorted(dicom_node1.glob("*.dcm"))[0], "--out", out)
    assert done.returncode == 0, done.stderr
    result = check_slide_outputs(out / "node1_dicom")
    assert [p.name for p in out.iterdir()] == ["node1_dicom"]
    assert result["slide_id"] == "node1_dicom" and result["path"] == str(dicom_node1.resolve())
    assert result["mpp_source"] == "dicom.PixelSpacing" and result["l0_mpp"] == pytest.approx(0.486)
    assert result["node_class"] == json.loads((REPO / "demo" / "expected.json").read_text())["nodes"]["1"] \
        == "negative"


def test_batch_scan_counts_a_dicom_folder_as_one_slide(dicom_node1, tmp_path):
    scan = tmp_path / "scan"
    shutil.copytree(dicom_node1, scan / "node1_dicom")
    shutil.copy(NODE1_TIFF, scan / "node1.tiff")
    inputs = discover_inputs([scan])
    assert [item.path for item in inputs] == [scan / "node1.tiff", scan / "node1_dicom"]
    one_file = sorted((scan / "node1_dicom").glob("*.dcm"))[2]
    assert [item.path for item in discover_inputs([one_file])] == [scan / "node1_dicom"]
    for scheme in ("quick", "full"):  # the same slide whichever instance names it, another id than the TIFF's
        assert slide_content_id(one_file, scheme) == slide_content_id(scan / "node1_dicom", scheme) \
            != slide_content_id(scan / "node1.tiff", scheme)

    out = tmp_path / "out"
    first = run_batch([scan], out)
    assert (first.n_done, first.n_failed, first.n_skipped) == (2, 0, 0)
    assert sorted(Path(row["out_dir"]).name for row in first.rows) == ["node1", "node1_dicom"]
    dicom = json.loads((out / "node1_dicom" / "result.json").read_text())
    assert dicom["mpp_source"] == "dicom.PixelSpacing" and dicom["node_class"] == "negative"
    again = run_batch([one_file], out)  # one of its files names the slide done before
    assert (again.n_done, again.n_failed, again.n_skipped) == (0, 0, 1)
    assert again.rows[0]["reason"] == "done before" and Path(again.rows[0]["out_dir"]).name == "node1_dicom"


def test_case_manifest_may_name_a_dicom_slide(dicom_node1, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"patient,node,slide_path,stain\np1,1,{sorted(dicom_node1.glob('*.dcm'))[0]},he\n")
    done = micromets("case", manifest, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    case = json.loads((tmp_path / "out" / "p1" / "case.json").read_text())
    assert case["failed_slides"] == []
    assert json.loads((tmp_path / "out" / "p1" / "node1_dicom" / "result.json").read_text())["node_class"] == "negative"


def test_a_folder_of_dcm_files_that_are_no_slide_is_one_clear_error(tmp_path):
    junk = tmp_path / "not_a_slide"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    done = micromets("analyze", junk, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "not_a_slide: no .dcm file of this folder is a DICOM whole-slide image OpenSlide reads")
    summary = run_batch([tmp_path], tmp_path / "batch")  # found as one slide, recorded as failed under its folder
    assert (summary.n_failed, [row["slide_id"] for row in summary.rows]) == (1, ["not_a_slide"])
