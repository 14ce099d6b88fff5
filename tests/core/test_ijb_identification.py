import numpy as np
import pytest

from core.data.synthetic.ijb import IJBConfig, make_ijb_set
from core.errors import DataError
from core.ijb_identification import (identification, identification_lists, read_identification_lists,
                                     read_template_subjects, search)


def _unit(*angles):
    return np.array([[np.cos(a), np.sin(a)] for a in angles], dtype=np.float32)


def test_open_set_search_by_hand():
    gallery, gallery_subjects = _unit(0.0, np.pi / 2), np.array([0, 1])
    cos = np.arccos
    # p0: subject 0, nearest g0 (0.9): a hit; p1: subject 1, but nearest g0 (0.8): a miss;
    # p2, p3: subjects 5 and 6, not in the gallery, best scores 0.5 and 0.95
    probes = _unit(cos(0.9), -cos(0.8), cos(0.5), cos(0.95))
    result = search(probes, np.array([0, 1, 5, 6]), gallery, gallery_subjects, fpirs=(0.01, 0.5, 1.0))
    assert result["rank1"] == 0.5 and result["mated"] == 2 and result["non_mated"] == 2
    # FPIR 0.01: no non-mated search may pass, threshold 0.95: p0's 0.9 does not; FPIR 0.5: one may, threshold 0.5
    assert result["tpir_at_fpir"] == {"0.01": 0.0, "0.5": 0.5, "1": 0.5}


def test_a_gallery_that_leaves_no_non_mated_search_is_refused():
    with pytest.raises(DataError, match="1:N needs probes whose subject is in the gallery and probes"):
        search(_unit(0.1), np.array([0]), _unit(0.0), np.array([0]))


@pytest.fixture(scope="module")
def ijb_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    make_ijb_set(root, IJBConfig(identities=6, frames_per_media=1, seed=3))
    return root


def test_the_rendered_set_lists_two_galleries_and_mixed_probes(ijb_set):
    lists = identification_lists(ijb_set / "meta", "ijbc")
    known = np.arange(1, 19)
    g1, s1 = read_template_subjects(lists["G1"], known)
    g2, s2 = read_template_subjects(lists["G2"], known)
    probes, probe_subjects = read_template_subjects(lists["probe"], known)
    assert sorted(np.r_[s1, s2].tolist()) == list(range(6)) and not set(g1) & set(g2)
    assert len(probes) == 12 and sorted(set(probe_subjects.tolist())) == list(range(6))
    # perfectly separated templates: every mated search hits and passes any threshold
    subject_axis = np.zeros((18, 6), dtype=np.float32)
    for templates, subjects in ((g1, s1), (g2, s2), (probes, probe_subjects)):
        subject_axis[templates - 1, subjects] = 1.0
    result = identification(read_identification_lists(lists, known), known, subject_axis)
    assert result["rank1"] == 1.0 and set(result["tpir_at_fpir"].values()) == {1.0}
    assert result["galleries"]["G1"]["mated"] == 6 and result["galleries"]["G1"]["non_mated"] == 6


def test_a_bad_list_fails_before_any_face_is_embedded(ijb_set, tmp_path, monkeypatch):
    import shutil

    import torch

    import core.ijb
    from core.backbones import build_backbone

    copy = tmp_path / "IJBC"
    shutil.copytree(ijb_set, copy)
    probes = copy / "meta" / "ijbc_1N_probe_mixed.csv"
    lines = probes.read_text().splitlines()
    lines[1] = "99999," + lines[1].split(",", 1)[1]
    probes.write_text("\n".join(lines) + "\n")

    def embed_nothing(*args, **kwargs):
        raise AssertionError("faces were embedded before the 1:N lists were checked")

    monkeypatch.setattr(core.ijb, "face_features", embed_nothing)
    with pytest.raises(DataError, match=r"ijbc_1N_probe_mixed.csv line 2: template 99999 has no faces"):
        core.ijb.evaluate_ijb(build_backbone("tiny", 8, 16).eval(), 16, copy, torch.device("cpu"), workers=0,
                              progress=False)


def test_a_listed_template_without_faces_is_named(ijb_set, tmp_path):
    listed = tmp_path / "ijbc_1N_gallery_G1.csv"
    listed.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,0,1.jpg\n77,3,9.jpg\n")
    with pytest.raises(DataError, match=r"ijbc_1N_gallery_G1.csv line 3: template 77 has no faces in the face list"):
        read_template_subjects(listed, np.arange(1, 19))
