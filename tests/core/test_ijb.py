import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import core.ijb as ijb
from cli import main
from core.backbones import build_backbone
from core.data.synthetic.faces import draw_identity_params, render_identity_images
from core.data.synthetic.ijb import IJBConfig, crop_transform, loose_crop, make_ijb_set
from core.errors import DataError
from core.ijb import (ARCFACE_LANDMARKS, align_face, evaluate_ijb, read_ijb_meta, score_pairs, similarity_transform,
                      tar_at_far, template_features)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ijb_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    make_ijb_set(root, IJBConfig(identities=6, frames_per_media=2, seed=3))  # 2 faces per media: averaged
    return root


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    for _ in range(5):
        angle, scale, shift = rng.uniform(-1, 1), rng.uniform(0.5, 2), rng.uniform(-30, 30, 2)
        known = np.hstack([scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]),
                           shift[:, None]])
        moved = ARCFACE_LANDMARKS @ known[:, :2].T + known[:, 2]
        np.testing.assert_allclose(similarity_transform(ARCFACE_LANDMARKS, moved), known, atol=1e-9)


def _cv2_warp_reference(image, matrix, size):
    """cv2.warpAffine's convention in numpy: output pixel (x, y) samples the input at inverse(x, y), bilinear."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:size[1], 0:size[0]].astype(np.float64)
    u = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    v = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fx, fy = (u - x0)[..., None], (v - y0)[..., None]
    pixel = lambda yy, xx: image[np.clip(yy, 0, image.shape[0] - 1), np.clip(xx, 0, image.shape[1] - 1)]  # noqa
    top = pixel(y0, x0) * (1 - fx) + pixel(y0, x0 + 1) * fx
    bottom = pixel(y0 + 1, x0) * (1 - fx) + pixel(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def test_the_warp_follows_cv2_s_pixel_convention_as_eval_ijbc_does():
    from PIL import Image

    ys, xs = np.mgrid[0:300, 0:300]
    wave = (127 + 60 * np.sin(xs / 9.0) * np.cos(ys / 13.0) + 50 * np.sin((xs + 2 * ys) / 17.0)).round()
    image = np.stack([wave, wave[::-1], wave[:, ::-1]], -1).clip(0, 255).astype(np.uint8)
    turn = np.array([[np.cos(0.35), -np.sin(0.35)], [np.sin(0.35), np.cos(0.35)]])
    landmarks = (ARCFACE_LANDMARKS - 56) @ turn.T * 2.2 + 150  # a face 2.2x the aligned size, turned
    matrix = similarity_transform(landmarks, ARCFACE_LANDMARKS)
    reference = _cv2_warp_reference(image.astype(float), matrix, (112, 112))
    inner = np.s_[8:-8, 8:-8]
    assert np.abs(align_face(image, landmarks) - reference)[inner].mean() < 0.75  # 8-bit rounding only
    # PIL's own convention (pixel centres at +0.5), unshifted, lands visibly elsewhere
    inverse = tuple(np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2].ravel())
    pil = np.asarray(Image.fromarray(image).transform((112, 112), Image.Transform.AFFINE, inverse,
                                                      resample=Image.Resampling.BILINEAR))
    assert np.abs(pil - reference)[inner].mean() > 2.0


def test_aligning_a_loose_crop_by_its_landmarks_recovers_the_face():
    rng = np.random.default_rng(1)
    face, other = (render_identity_images(draw_identity_params(rng), rng, 1)[0] for _ in range(2))
    transform = crop_transform(rng)
    crop = loose_crop(face, transform)
    aligned = align_face(crop, ARCFACE_LANDMARKS @ transform[:, :2].T + transform[:, 2])
    inner = np.s_[8:-8, 8:-8]  # the border may hold the crop's grey margin
    recovered = np.abs(aligned[inner].astype(float) - face[inner]).mean()
    assert recovered < 8 and recovered < np.abs(other[inner].astype(float) - face[inner]).mean() / 4


def test_template_feature_and_score_by_hand():
    features = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2], [3, 4, 0], [1, 1, 1]], dtype=np.float32)
    templates = np.array([7, 7, 7, 9, 9])
    medias = np.array([1, 1, 2, 3, 4])
    weights = np.array([1.0, 0.5, 1.0, 2.0, 1.0])
    ids, unit = template_features(features, templates, medias, weights)
    # template 7: media 1 averages 1*[1,0,0] and 0.5*[0,1,0]; media 2 is 1*[0,0,2]; their sum, normalised
    seven = np.array([0.5, 0.25, 2.0]) / np.linalg.norm([0.5, 0.25, 2.0])
    nine = np.array([7.0, 9.0, 1.0]) / np.linalg.norm([7.0, 9.0, 1.0])  # 2*[3,4,0] + [1,1,1]
    assert ids.tolist() == [7, 9]
    np.testing.assert_allclose(unit, [seven, nine], atol=1e-6)
    np.testing.assert_allclose(score_pairs(ids, unit, np.array([[7, 9], [9, 9]])), [seven @ nine, 1.0], atol=1e-6)


def test_pooling_and_scoring_in_chunks_equal_them_whole(monkeypatch):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(500, 8)).astype(np.float32)
    templates, medias = rng.integers(0, 40, 500), rng.integers(0, 90, 500)
    ids, whole = template_features(features, templates, medias)
    pairs = rng.choice(ids, size=(1000, 2))
    scores = score_pairs(ids, whole, pairs)
    monkeypatch.setattr(ijb, "POOL_CHUNK", 37)
    np.testing.assert_allclose(template_features(features, templates, medias)[1], whole, atol=1e-6)
    monkeypatch.setattr(ijb, "TEMPLATE_BLOCK", 16)  # 1000 pairs of 40 templates: the block GEMM path
    np.testing.assert_allclose(score_pairs(ids, whole, pairs), scores, atol=1e-6)
    monkeypatch.setattr(ijb, "GEMM_BREAK_EVEN", 1)  # and the gathered pairs, in batches
    np.testing.assert_allclose(score_pairs(ids, whole, pairs, batch=77), scores, atol=1e-6)
    reference = np.array([whole[ids == a][0] @ whole[ids == b][0] for a, b in pairs])
    np.testing.assert_allclose(scores, reference, atol=1e-6)


def _sklearn_tar(labels, scores, far):
    """The highest TPR of sklearn's full ROC among the points whose FPR is at most ``far``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return tpr[fpr <= far].max()


@pytest.mark.parametrize("rounding", [None, 1])  # continuous scores, and many tied ones
def test_tar_at_far_matches_sklearn_s_roc(rounding):
    rng = np.random.default_rng(4)
    labels = np.r_[np.ones(300), np.zeros(3000)].astype(int)
    scores = np.r_[rng.normal(1.0, 1, 300), rng.normal(0, 1, 3000)].astype(np.float32)
    if rounding is not None:
        scores = scores.round(rounding)
    fars = (1e-4, 3.3e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0)
    for far, tar in zip(fars, tar_at_far(labels, scores, fars).values()):
        assert tar == pytest.approx(_sklearn_tar(labels, scores, far), abs=1e-12), far


def test_tar_at_far_of_a_perfectly_separated_set_is_one():
    labels = np.r_[np.ones(5), np.zeros(50)]
    scores = np.r_[np.full(5, 0.9), np.linspace(-0.5, 0.5, 50)]
    assert set(tar_at_far(labels, scores).values()) == {1.0}


def test_the_protocol_equals_a_direct_computation(ijb_set):
    torch.manual_seed(0)
    network = build_backbone("tiny", 16, 32).eval()
    result = evaluate_ijb(network, 32, ijb_set, CPU, batch_size=7, workers=0, progress=False)
    meta = read_ijb_meta(ijb_set)
    # directly, face by face and template by template, as insightface's eval_ijbc.py loops
    from core.data.base import decode_image
    from core.data.transforms import to_model_input

    features = []
    for name, landmarks, score in zip(meta.images, meta.landmarks, meta.detector_scores):
        face = align_face(decode_image((ijb_set / "loose_crop" / name).read_bytes(), name), landmarks)
        x = to_model_input(face, 32)
        with torch.no_grad():
            features.append(((network(x) + network(torch.flip(x, dims=[-1])))[0] * float(score)).numpy())
    features = np.array(features, dtype=np.float64)
    template = {}
    for t in np.unique(meta.templates):
        in_template = meta.templates == t
        media = [features[in_template & (meta.medias == m)].mean(0) for m in np.unique(meta.medias[in_template])]
        total = np.sum(media, axis=0)
        template[t] = total / np.linalg.norm(total)
    scores = np.array([template[a] @ template[b] for a, b in meta.pairs])
    for far in ijb.FARS:
        assert result["tar_at_far"][f"{far:.0e}"] == pytest.approx(_sklearn_tar(meta.labels, scores, far), abs=1e-6)
    assert result["templates"] == 18 and result["pairs"] == 153 and result["positive_pairs"] == 18


def _damaged_copy(ijb_set, tmp_path, meta_file, edit):
    import shutil

    copy = tmp_path / "IJBC"
    shutil.copytree(ijb_set, copy)
    path = copy / "meta" / meta_file
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return copy


@pytest.mark.parametrize("meta_file, edit, message", [
    ("ijbc_name_5pts_score.txt", lambda lines: lines.__setitem__(4, " ".join(lines[4].split()[:-2])),
     r"ijbc_name_5pts_score.txt line 5: expected 12 fields \(image, 10 landmark coordinates, detector score\), got 10"),
    ("ijbc_template_pair_label.txt", lambda lines: lines.__setitem__(2, "1 999 0"),
     r"ijbc_template_pair_label.txt line 3: template 999 has no faces in ijbc_face_tid_mid.txt"),
    ("ijbc_face_tid_mid.txt", lambda lines: lines.__setitem__(1, lines[1].replace(" ", " x", 1)),
     r"ijbc_face_tid_mid.txt line 2: 'x\d+' is not a whole number \(image, template id, media id\)"),
])
def test_bad_meta_is_named_with_file_and_line(ijb_set, tmp_path, meta_file, edit, message):
    with pytest.raises(DataError, match=message):
        read_ijb_meta(_damaged_copy(ijb_set, tmp_path, meta_file, edit))


def test_a_missing_crop_is_named_with_its_meta_line(ijb_set, tmp_path):
    copy = _damaged_copy(ijb_set, tmp_path, "ijbc_face_tid_mid.txt", lambda lines: None)
    (copy / "loose_crop" / "3.jpg").unlink()
    line = next(i for i, text in enumerate((copy / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines(), 1)
                if text.startswith("3.jpg "))
    with pytest.raises(DataError, match=rf"ijbc_face_tid_mid.txt line {line}: .*loose_crop/3.jpg not found"):
        read_ijb_meta(copy)


def test_two_models_side_by_side_in_one_table(ijb_set, tiny_rec, tmp_path):
    torch.manual_seed(0)
    for name in ("a", "b"):
        torch.save(build_backbone("tiny", 16, 16).state_dict(), tmp_path / f"{name}.pth")
    table = tmp_path / "results.md"
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--backbone", "tiny",
                                       "--input-size", "16", "--val", str(tiny_rec / "val.bin"), "--ijb", str(ijb_set),
                                       "--table", str(table), "--workers", "0", "--quiet", "--device", "cpu",
                                       "--json"])
    assert result.exit_code == 0, result.output
    printed = [json.loads(line)["metrics"] for line in result.output.splitlines() if line.startswith("{")]
    lines = table.read_text().splitlines()
    assert lines[0].startswith("| model | val acc. % | IJBC TAR@FAR=1e-06 |") and len(lines) == 4
    for line, metrics in zip(lines[2:], printed):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == f"{100 * metrics['val']['accuracy']:.2f} ± {100 * metrics['val']['accuracy_std']:.2f}"
        assert cells[4] == f"{100 * metrics['IJBC']['tar_at_far']['1e-04']:.2f}"
    assert (tmp_path / "results.csv").read_text().count("\n") == 3


def test_two_sets_under_one_name_both_report_and_bad_outputs_are_refused_first(ijb_set, tmp_path):
    import shutil

    torch.save(build_backbone("tiny", 16, 16).state_dict(), tmp_path / "a.pth")
    shutil.copytree(ijb_set, tmp_path / "second" / "IJBC")
    model = [str(tmp_path / "a.pth"), "--backbone", "tiny", "--input-size", "16", "--workers", "0", "--quiet",
             "--device", "cpu"]
    second = tmp_path / "second" / "IJBC"
    result = CliRunner().invoke(main, ["eval", *model, "--ijb", str(ijb_set), "--ijb", str(second), "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.output)) == ["IJBC", "second/IJBC"]
    for flags, message in ((["--ijb", str(ijb_set), "--table", str(tmp_path / "t.csv")], "give a name ending in .md"),
                           (["--ijb", str(ijb_set), "--roc", str(tmp_path / "roc.jpg")], "ending in .png, .pdf, .svg"),
                           (["--val", str(tmp_path / "missing.bin"), "--roc", str(tmp_path / "roc.png")],
                            "the ROC curves are IJB's; give --ijb DIR")):
        refused = CliRunner().invoke(main, ["eval", *model, *flags])
        assert refused.exit_code == 2 and message in refused.output  # before any set is read
