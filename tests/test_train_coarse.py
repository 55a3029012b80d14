"""The coarse-screen recipe: IDC split by patient, normal node data at the screen's µm/px, unseen tiles kept out."""

from micromets.train.coarse import COARSE_MPP, COARSE_PATCH_PX, lymph_node, split_patients
from micromets.train.recipes import C17_UNSEEN_TILES


def test_idc_split_is_by_patient_seeded_and_disjoint(shared_data):
    train, held = split_patients(shared_data / "idc_breast", seed=0)
    assert set(train).isdisjoint(held)
    n = len(train) + len(held)
    assert n == len([p for p in (shared_data / "idc_breast").iterdir() if p.is_dir()])
    assert abs(len(held) - 0.2 * n) <= 1
    assert (train, held) == split_patients(shared_data / "idc_breast", seed=0)
    assert held != split_patients(shared_data / "idc_breast", seed=1)[1]


def test_lymph_node_samples_at_the_screen_resolution_never_the_unseen_tiles(shared_data):
    samples = lymph_node(shared_data, COARSE_MPP, COARSE_PATCH_PX)
    assert {s.label for s in samples if s.source == "camelyon16"} == {0, 1}
    assert {s.label for s in samples if s.source != "camelyon16"} == {0}  # c17 negative nodes, colorectal normal
    assert {s.source for s in samples} == {"camelyon16", "camelyon17_tiles", "crc"}
    assert not any(tile in s.name for s in samples for tile in C17_UNSEEN_TILES)
    c16 = next(s for s in samples if s.source == "camelyon16")
    assert c16.rgb.shape[:2] == (31, 31)  # 256 px at 0.243 µm/px = 62 µm = 31 px at 2 µm/px
