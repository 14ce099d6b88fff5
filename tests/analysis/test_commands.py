"""The analyze commands end to end on tiny trained runs, through click's CliRunner."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analysis.commands import analyze
from analysis.conflict import CONFLICT_COLUMNS
from analysis.crossval import conflict_score, load_crossval
from analysis.longtail import LONGTAIL_COLUMNS
from analysis.noise import NOISE_COLUMNS
from core.data.folder import ListDataset
from core.errors import ConfigError, DataError
from tests.analysis.conftest import write_rec


def invoke(*args: str) -> str:
    result = CliRunner().invoke(analyze, [*map(str, args), "--quiet", "--workers", "0", "--device", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_report_scores_against_ground_truth(synthetic_run, synthetic_data, tmp_path):
    out = tmp_path / "report"
    output = invoke("report", synthetic_run, "--out", out)  # --data defaults to the run's own data
    for name in ("conflict.csv", "noise.csv", "longtail.csv", "report.html", "report.md", "summary.json",
                 "conflict_pr.png", "noise_pr.png", "conflict_similarity.png", "conflict_llr.png", "noise_score.png",
                 "longtail_norm.png", "longtail_compactness.png", "longtail_nearest.png", "longtail_updates.png",
                 "longtail_head_tail.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert str(out / name) in output
    summary = json.loads((out / "summary.json").read_text())
    truth = json.loads((synthetic_data / "ground_truth.json").read_text())
    assert summary["noise"]["ground_truth"]["positives"] == len(truth["flipped"]["key"])
    assert summary["conflict"]["ground_truth"]["positives"] == len(truth["split_pairs"])
    for task in ("noise", "conflict"):
        figures = summary[task]["ground_truth"]
        assert 0.0 <= figures["average_precision"] <= 1.0
    # A flipped image is found even by this 3-epoch toy model; its 3 split pairs among 15 classes are luck either
    # way (the rankings' quality is tested on embeddings with known structure, in test_conflict / test_noise).
    noise = summary["noise"]["ground_truth"]
    assert noise["average_precision"] > noise["chance_average_precision"]
    llr = pd.read_csv(out / "conflict.csv")["same_person_llr"]
    assert llr.notna().all()
    assert summary["conflict"]["llr_positive_pairs"] == int((llr > 0).sum())
    assert 0.0 <= summary["conflict"]["ground_truth"]["same_person_llr_average_precision"] <= 1.0
    markdown = (out / "report.md").read_text()
    review_order = markdown.split("Pairs most likely to be one person", 1)[1]
    first_row = [cell.strip() for cell in review_order.split("\n|", 3)[3].split("|")[:2]]
    top = pd.read_csv(out / "conflict.csv").nlargest(1, "same_person_llr").iloc[0]
    assert first_row == [str(top["label_a"]), str(top["label_b"])]
    html = (out / "report.html").read_text()
    for text in ("Figures that matter", "Parameters", "Why this threshold", "average_precision", "precision",
                 "recall", "Most similar class pairs", "Most suspect samples", "Most frequent classes"):
        assert text in markdown and text in html, text
    for image in ("conflict_pr.png", "noise_pr.png", "longtail_updates.png"):
        assert f"]({image})" in markdown and f'src="{image}"' in html
    ap = summary["noise"]["ground_truth"]["average_precision"]
    assert f"AP {ap:.3f}" in markdown and f"AP {ap:.3f}" in output
    assert "Next: " in output


def markdown_table(markdown: str, caption: str) -> pd.DataFrame:
    """The report table under the caption that starts with ``caption``, as strings."""
    lines = markdown.split("\n" + caption, 1)[1].split("\n\n", 2)[1].splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_report_marks_ground_truth_hits_and_shows_the_suspects_faces(synthetic_run, synthetic_data, tmp_path):
    from PIL import Image

    from analysis.groundtruth import conflict_positives, noise_positives

    out = tmp_path / "report"
    output = invoke("report", synthetic_run, "--out", out)
    markdown, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    truth = json.loads((synthetic_data / "ground_truth.json").read_text())
    conflict = pd.read_csv(out / "conflict.csv")
    assert list(conflict.columns) == CONFLICT_COLUMNS  # the truth is the report's column, not the CSV's
    split, _ = conflict_positives(truth, conflict["label_a"].to_numpy(), conflict["label_b"].to_numpy(), 15)
    shown = markdown_table(markdown, "Most similar class pairs (conflict.csv)")
    assert list(shown.columns[:3]) == ["label_a", "label_b", "true_split"]
    assert shown["label_a"].tolist() == conflict["label_a"].head(len(shown)).astype(str).tolist()
    assert shown["true_split"].tolist() == ["yes" if hit else "no" for hit in split[:len(shown)]]
    noise = pd.read_csv(out / "noise.csv")
    flipped = noise_positives(truth, len(noise), noise["record"].to_numpy())
    shown = markdown_table(markdown, "Most suspect samples (noise.csv)")
    assert "path" not in shown.columns and "not shown: path" in markdown  # .rec data: no paths
    assert shown["true_flip"].tolist() == ["yes" if hit else "no" for hit in flipped[:len(shown)]]
    assert "yes" in shown["true_flip"].tolist()  # the toy run ranks a flipped image in its top rows
    for name in ("conflict_pairs.jpg", "noise_samples.jpg"):
        with Image.open(out / name) as sheet:
            assert sheet.format == "JPEG" and sheet.height > 8 * 64  # eight suspects, a row of faces each
        assert f'<img src="{name}"' in html and f"]({name})" in markdown and str(out / name) in output


def test_each_command_writes_its_csv_with_the_documented_schema(synthetic_run, synthetic_data, tmp_path):
    out = tmp_path / "out"
    output = invoke("conflict", synthetic_run, "--data", synthetic_data, "--out", out, "--k", "3",
                    "--threshold", "0.2")
    conflict = pd.read_csv(out / "conflict.csv")
    assert list(conflict.columns) == CONFLICT_COLUMNS
    assert conflict["similarity"].is_monotonic_decreasing
    assert (conflict["flagged"] == (conflict["similarity"] > 0.2)).all()
    assert "Next: python cli.py analyze report" in output

    output = invoke("noise", synthetic_run, "--data", synthetic_data, "--out", out)
    noise = pd.read_csv(out / "noise.csv")
    assert list(noise.columns) == NOISE_COLUMNS
    assert len(noise) == 62 and noise["score"].is_monotonic_decreasing
    assert sorted(noise["record"]) == list(range(1, 63)) and noise["path"].isna().all()
    assert "Next: python cli.py analyze report" in output
    # a new command replaces the previous one's outputs: no conflict.csv beside a noise-only report
    assert not list(out.glob("conflict*")) and list(json.loads((out / "summary.json").read_text())) == ["noise"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    output = invoke("longtail", synthetic_run, "--data", synthetic_data, "--out", out)
    longtail = pd.read_csv(out / "longtail.csv")
    # the fixed columns, then the statistics the run's method (Partial FC) recorded, by name
    assert list(longtail.columns) == LONGTAIL_COLUMNS + ["positive_updates", "negative_updates"]
    assert sorted(longtail["label"]) == list(range(15)) and longtail["count"].sum() == 62
    assert longtail["count"].is_monotonic_decreasing
    assert (longtail["center_norm"] > 0).all() and (longtail["positive_updates"] > 0).all()
    # full softmax (sample rate 1): in each of the 21 steps a class is either a positive or pushed as a negative
    assert ((longtail["positive_updates"] + longtail["negative_updates"]) == 21).all()
    assert (longtail["negative_updates"] > 0).all()
    assert "Next: python cli.py analyze report" in output
    # the report of the last command describes that command only
    assert "Long tail" in (out / "report.md").read_text()


def test_embeddings_are_cached_per_checkpoint_and_data(folder_run, folder_data, tmp_path):
    invoke("noise", folder_run, "--data", folder_data, "--out", tmp_path / "a")
    cached = sorted((folder_run / "analysis_cache").glob("*.npy"))
    assert cached
    invoke("noise", folder_run, "--data", folder_data, "--out", tmp_path / "b")
    assert "(cache hit)" in (tmp_path / "b" / "report.md").read_text()
    checkpoint = folder_run / "checkpoint.pt"
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as if retrained
    invoke("noise", folder_run, "--data", folder_data, "--out", tmp_path / "c")
    assert "(computed)" in (tmp_path / "c" / "report.md").read_text()
    assert len(list((folder_run / "analysis_cache").glob("*.npy"))) == len(cached) + 1
    image = sorted(folder_data.rglob("*.png"))[0]  # replaced in place: the folder itself looks unchanged
    stat = image.stat()
    image.write_bytes(image.read_bytes())
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    invoke("noise", folder_run, "--data", folder_data, "--out", tmp_path / "d")
    assert "(computed)" in (tmp_path / "d" / "report.md").read_text()


def test_dcq_run_uses_class_means_and_reports_queue_residency(dcq_run, tmp_path):
    out = tmp_path / "dcq"
    invoke("longtail", dcq_run, "--out", out)
    table = pd.read_csv(out / "longtail.csv")
    # DCQ's own counters, by the names its checkpoint recorded; no passive updates column to fill with zeros
    assert list(table.columns)[-3:] == ["positive_updates", "queue_entries", "queue_steps"]
    assert table["center_norm"].isna().all()
    assert table["queue_entries"].sum() > 0 and table["positive_updates"].sum() > 0
    report = (out / "report.md").read_text()
    assert "never trained, so not passive updates" in report and "class means" in report
    summary = json.loads((out / "summary.json").read_text())["longtail"]
    assert "head median passive / positive updates" not in summary and "tail median queue_steps" in summary
    assert not (out / "longtail_norm.png").exists()
    assert "| label | count | compactness |" in report  # center_norm of class means: empty, so not shown
    assert "Most frequent classes (longtail.csv) (top 10 of 15 rows; empty here, not shown: center_norm)" in report
    with pytest.raises(ConfigError, match="keeps no per-class centers"):
        invoke("conflict", dcq_run, "--out", out, "--centers", "store")


def test_write_clean_round_trip_on_folder_data(folder_run, folder_data, tmp_path):
    out = tmp_path / "clean"
    clean = tmp_path / "clean.txt"
    output = invoke("noise", folder_run, "--data", folder_data, "--out", out, "--write-clean", clean,
                    "--threshold", "1.0")
    assert f"--data {clean}" in output
    noise = pd.read_csv(out / "noise.csv")
    summary = json.loads((out / "summary.json").read_text())["noise"]["clean"]
    cleaned = ListDataset(clean)
    assert summary["dropped"] > 0 and len(cleaned) == len(noise) - summary["dropped"]
    assert cleaned.num_classes == 6  # no class is ever emptied
    kept = dict(zip(cleaned.paths, cleaned.labels.tolist()))
    for row in noise.itertuples():
        if row.path in kept:
            assert kept[row.path] == row.label
    dropped = set(noise["path"]) - set(kept)
    assert dropped <= set(noise.loc[noise["flagged"], "path"])
    # the cleaned list is valid --data for the same run
    invoke("noise", folder_run, "--data", clean, "--out", tmp_path / "again")
    assert len(pd.read_csv(tmp_path / "again" / "noise.csv")) == len(cleaned)

    relabelled = tmp_path / "relabelled.txt"
    invoke("noise", folder_run, "--data", folder_data, "--out", out, "--write-clean", relabelled, "--relabel",
           "--threshold", "1.0")
    summary = json.loads((out / "summary.json").read_text())["noise"]["clean"]
    moved = ListDataset(relabelled)
    assert summary["relabelled"] > 0 and len(moved) == len(noise) - summary["dropped"]
    new_label = dict(zip(moved.paths, moved.labels.tolist()))
    by_path = noise.set_index("path")
    changed = [p for p, label in new_label.items() if label != by_path.loc[p, "label"]]
    assert len(changed) == summary["relabelled"]
    assert all(new_label[p] == by_path.loc[p, "nearest_label"] and by_path.loc[p, "flagged"] for p in changed)


def test_mislabelled_images_rank_first(folder_run, folder_data, tmp_path):
    invoke("noise", folder_run, "--data", folder_data, "--out", tmp_path)
    noise = pd.read_csv(tmp_path / "noise.csv")
    planted = {str(folder_data / "id00" / name) for name in ("006.png", "007.png")}
    assert set(noise["path"].head(2)) == planted
    assert noise["flagged"].head(2).all()
    # the contact sheet's first row starts with the first suspect's own image (halves of two colours each)
    from PIL import Image

    from analysis.thumbnails import EXAMPLES_PER_CLASS, TILE, tile_origin

    left, top = tile_origin(0, 0, 0, [1, EXAMPLES_PER_CLASS, EXAMPLES_PER_CLASS])
    with Image.open(tmp_path / "noise_samples.jpg") as sheet:
        tile = np.asarray(sheet.convert("RGB").crop((left, top, left + TILE, top + TILE)), dtype=float)
    with Image.open(noise["path"][0]) as image:
        suspect = np.asarray(image.convert("RGB"), dtype=float)
    half, tile_half = len(suspect) // 2, TILE // 2
    assert np.abs(tile[:tile_half].mean((0, 1)) - suspect[:half].mean((0, 1))).max() < 8
    assert np.abs(tile[tile_half:].mean((0, 1)) - suspect[half:].mean((0, 1))).max() < 8
    assert "true_flip" not in (tmp_path / "report.md").read_text()  # folder data without ground truth


def test_write_clean_of_rec_data_references_records(synthetic_run, synthetic_data, tmp_path):
    clean = tmp_path / "clean.lst"
    invoke("noise", synthetic_run, "--out", tmp_path / "out", "--write-clean", clean,
           "--threshold", "0.5")  # this toy run separates its classes poorly: a margin keeps the flags credible
    lines = clean.read_text().splitlines()
    noise = pd.read_csv(tmp_path / "out" / "noise.csv").set_index("record")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["noise"]["clean"]
    rec = str((synthetic_data / "train.rec").resolve())
    assert summary["written"] and len(lines) == summary["samples"] == len(noise) - summary["dropped"]
    kept = set()
    for line in lines:
        reference, label = line.rsplit(" ", 1)
        path, key = reference.rsplit("#", 1)
        assert path == rec and int(label) == noise.loc[int(key), "label"]
        kept.add(int(key))
    assert set(noise.index[~noise["flagged"]]) <= kept
    # the cleaned list analysed in turn: its samples keep their record keys
    relisted = pd.read_csv(invoke_and_read(synthetic_run, clean, tmp_path / "again") / "noise.csv")
    assert sorted(relisted["record"]) == sorted(kept)


def invoke_and_read(run, data, out):
    invoke("noise", run, "--data", data, "--out", out)
    return out


def test_no_cleaning_list_from_flags_that_are_not_credible(synthetic_run, tmp_path):
    clean = tmp_path / "clean.lst"
    clean.write_text("an earlier command's list\n")  # must not survive as if it were this command's answer
    output = invoke("noise", synthetic_run, "--out", tmp_path / "out", "--write-clean", clean,
                    "--threshold", "-1e9")  # flags every sample
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["noise"]
    assert summary["flagged"] == summary["samples"] and summary["clean"] == {"path": str(clean), "written": False}
    assert not clean.exists()
    assert "Warning (noise): 100% of the samples are flagged" in output and "was not written" in output
    assert "cli.py train" not in output and "metrics.json) before cleaning" in output


def test_write_clean_never_overwrites_the_data_or_the_outputs(folder_run, folder_data, tmp_path):
    listed = tmp_path / "data.txt"
    listed.write_text("".join(f"{path} {label}\n" for path, label in
                              ((p, int(p.parent.name[-1])) for p in sorted(folder_data.rglob("*.png")))))
    before = listed.read_text()
    with pytest.raises(ConfigError, match="would overwrite the analysed data"):
        invoke("noise", folder_run, "--data", listed, "--out", tmp_path / "out", "--write-clean", listed)
    assert listed.read_text() == before
    with pytest.raises(ConfigError, match="one of the files this command writes"):
        invoke("noise", folder_run, "--data", folder_data, "--out", tmp_path / "out", "--write-clean",
               tmp_path / "out" / "noise.csv")
    rec = write_rec(tmp_path / "rec", classes=6)
    with pytest.raises(ConfigError, match="would overwrite the analysed data"):  # --data names the .rec file
        invoke("noise", folder_run, "--data", rec / "train.rec", "--out", tmp_path / "out", "--write-clean",
               rec / "train.idx")


def test_bad_inputs_are_clear_errors(folder_run, folder_data, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint found"):
        invoke("conflict", tmp_path, "--data", folder_data, "--out", tmp_path / "x")
    other = write_rec(tmp_path / "five", classes=5, per_class=2)
    with pytest.raises(DataError, match="has 5 classes but the run .* was trained on 6"):
        invoke("noise", folder_run, "--data", other, "--out", tmp_path / "x")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    with pytest.raises(DataError, match="empty.txt"):
        invoke("noise", folder_run, "--data", empty, "--out", tmp_path / "x")
    with pytest.raises(DataError, match="no such file"):
        invoke("noise", folder_run, "--data", tmp_path / "missing", "--out", tmp_path / "x")
    with pytest.raises(ConfigError, match="--relabel"):
        invoke("noise", folder_run, "--out", tmp_path / "x", "--relabel")
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(analyze, ["noise", str(folder_run), "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file" in result.output
    with pytest.raises(ConfigError, match="--k"):
        invoke("conflict", folder_run, "--out", tmp_path / "x", "--k", "0")


@pytest.mark.parametrize("truth, reason", [
    (None, "describes 15 classes but the data has 6; it belongs to another dataset"),
    ('{"people": ["a user\'s own file"]}', "not a facequeue synthetic ground truth"),
    ("{not json", "cannot read ground truth"),
])
def test_a_ground_truth_that_does_not_fit_gives_a_warning_and_an_unscored_report(
        folder_run, folder_data, synthetic_data, tmp_path, truth, reason):
    data = tmp_path / "data"
    shutil.copytree(folder_data, data)
    if truth is None:
        shutil.copy(synthetic_data / "ground_truth.json", data / "ground_truth.json")  # 15 classes, not 6
    else:
        (data / "ground_truth.json").write_text(truth)
    result = CliRunner().invoke(analyze, ["report", str(folder_run), "--data", str(data), "--out",
                                          str(tmp_path / "out"), "--quiet", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"warning: {data / 'ground_truth.json'}: " in result.output and reason in result.output
    assert "not scored against it" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"conflict", "noise", "longtail"} <= set(summary)  # the full report, unscored
    assert all("ground_truth" not in summary[section] for section in ("conflict", "noise"))
    assert all((tmp_path / "out" / name).is_file() for name in ("conflict.csv", "noise.csv", "longtail.csv"))
    assert f"not used: {data / 'ground_truth.json'}" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("option, value", [("--threshold", "nan"), ("--threshold", "2"),
                                           ("--outlier-threshold", "inf")])
def test_thresholds_outside_their_range_are_refused(folder_run, tmp_path, option, value):
    command = "conflict" if option == "--threshold" else "noise"
    with pytest.raises(ConfigError, match=option):
        invoke(command, folder_run, "--out", tmp_path / "out", option, value)


def test_the_report_states_the_k_actually_used(folder_run, tmp_path):
    invoke("conflict", folder_run, "--out", tmp_path / "out", "--k", "100")  # 6 classes: 5 others at most
    assert "5 (--k 100: only 5 other classes)" in (tmp_path / "out" / "report.md").read_text()


def test_the_retraining_hint_keeps_the_run_s_validation_sets(tmp_path):
    from types import SimpleNamespace

    from analysis.commands import run_val_files

    data = tmp_path / "data"
    data.mkdir()
    (data / "val.bin").write_bytes(b"")
    (tmp_path / "lfw.bin").write_bytes(b"")
    named = SimpleNamespace(config={"data": str(data), "val": ["val", str(tmp_path / "lfw.bin")]},
                            checkpoint=tmp_path / "run" / "checkpoint.pt")
    assert run_val_files(named) == [str(data / "val.bin"), str(tmp_path / "lfw.bin")]
    gone = SimpleNamespace(config={"data": str(tmp_path / "moved"), "val": ["val"]}, checkpoint=named.checkpoint)
    assert run_val_files(gone) == []  # the data moved: no hint rather than a wrong one
    unvalidated = SimpleNamespace(config={"data": str(data), "val": []}, checkpoint=named.checkpoint)
    assert run_val_files(unvalidated) == []  # a folder's val.bin was not the run's: not added


def test_figures_follow_figure_format_and_a_new_command_replaces_the_old_format(synthetic_run, tmp_path):
    out = tmp_path / "out"
    invoke("longtail", synthetic_run, "--out", out, "--figure-format", "svg")
    drawn = sorted(path.name for path in out.iterdir() if path.suffix in (".png", ".svg", ".pdf"))
    assert drawn and all(name.endswith(".svg") for name in drawn)
    html = (out / "report.html").read_text()
    assert all(f'<img src="{name}"' in html for name in drawn)
    assert (out / drawn[0]).read_bytes().startswith(b"<?xml")
    invoke("longtail", synthetic_run, "--out", out)  # png, the default: no svg of the earlier command is left
    assert sorted(path.stem for path in out.glob("*.png")) == sorted(name[:-4] for name in drawn)
    assert not list(out.glob("*.svg"))


def test_bare_weights_analyse_like_their_run(synthetic_run, synthetic_data, tmp_path):
    import torch

    from core.models import load_model

    loaded = load_model(synthetic_run, torch.device("cpu"))
    weights = tmp_path / "backbone.pth"
    torch.save(loaded.network.state_dict(), weights)
    invoke("noise", synthetic_run, "--out", tmp_path / "from_run")
    output = invoke("noise", weights, "--backbone", "tiny", "--input-size", loaded.input_size, "--data",
                    synthetic_data, "--out", tmp_path / "from_weights")
    from_weights = pd.read_csv(tmp_path / "from_weights" / "noise.csv").sort_values("index", ignore_index=True)
    from_run = pd.read_csv(tmp_path / "from_run" / "noise.csv").sort_values("index", ignore_index=True)
    features = ["index", "record", "path", "label", "own_similarity", "nearest_label", "nearest_similarity",
                "feature_score"]
    pd.testing.assert_frame_equal(from_weights[features], from_run[features])  # the same network, the same features
    # bare weights carry no training margins: ranked by the final features; the run by its margins too
    assert from_weights["training_score"].isna().all()
    assert (from_weights["score"] == from_weights["feature_score"]).all()
    assert from_run["training_score"].notna().all()
    assert f"--backbone tiny --input-size {loaded.input_size} --data {synthetic_data}" in output  # the next command
    with pytest.raises(ConfigError, match="backbone.pth: bare weights name no training data; pass --data"):
        invoke("noise", weights, "--backbone", "tiny", "--input-size", loaded.input_size, "--out", tmp_path / "x")


def test_flags_that_contradict_a_run_are_refused_and_bare_weights_hint_a_fitting_retraining(
        synthetic_run, synthetic_data, tmp_path):
    import torch

    from core.models import load_model

    with pytest.raises(ConfigError, match=r"a run knows its network; --embedding-size 999 \(the run has 16\)"):
        invoke("noise", synthetic_run, "--embedding-size", "999", "--out", tmp_path / "x")
    loaded = load_model(synthetic_run, torch.device("cpu"))
    torch.save(loaded.network.state_dict(), tmp_path / "w.pth")
    output = invoke("noise", tmp_path / "w.pth", "--backbone", "tiny", "--input-size", loaded.input_size, "--data",
                    synthetic_data, "--out", tmp_path / "out", "--write-clean", tmp_path / "clean.lst",
                    "--threshold", "0.5")
    assert (f"Next: python cli.py train --method pfc --backbone tiny --embedding-size 16 --input-size "
            f"{loaded.input_size} --init {tmp_path / 'w.pth'} --data {tmp_path / 'clean.lst'}") in output


def test_crossval_writes_reference_evidence_that_the_report_ranks_by(synthetic_run, synthetic_data, folder_run,
                                                                     tmp_path):
    run = tmp_path / "run"  # a copy: the evidence lands beside its checkpoint, where every analyze command looks
    shutil.copytree(synthetic_run, run)
    recipe = tmp_path / "reference.yaml"
    recipe.write_text("backbone: tiny\ninput_size: 16\nembedding_size: 16\nbatch_size: 8\nepochs: 5\nlr: 0.05\n"
                      "workers: 0\ncheckpoint_every: 0\nsample_rate: 1.0\n")
    result = CliRunner().invoke(analyze, ["crossval", str(run), "--folds", "2", "--epochs", "2", "--config",
                                          str(recipe), "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "reference model 2 of 6" in result.output and "(2 epochs)" in result.output
    assert "reference model 3 of 6 on 62 of 62 images" in result.output  # the all-data model
    assert "reference model 6 of 6 on 62 of 62 images" in result.output  # the second repeat's
    assert "2 x (2 fold models and one on all the data)" in result.output
    assert "Keep [repeat*/]fold*/embeddings.npy" in result.output
    assert (run / "crossval" / "crossval.npz").is_file() and (run / "crossval" / "repeat1" / "crossval.npz").is_file()
    assert f"analyze report {run} --out {run / 'analysis'}" in result.output  # found without --crossval
    output = invoke("report", run, "--out", tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["noise"]["ranking"].startswith("cross-validated reference models")
    assert -1.0 <= summary["noise"]["crossval_agreement"] <= 1.0
    assert "crossval_score_average_precision" in summary["conflict"]["ground_truth"]
    noise = pd.read_csv(tmp_path / "report" / "noise.csv").sort_values("index")
    evidence = load_crossval(run / "crossval", len(noise),
                             json.loads((run / "crossval" / "crossval.json").read_text())["num_classes"])
    assert np.allclose(noise["crossval_score"], evidence.noise_score, atol=1e-5)
    assert noise["crossval_score"].notna().all()
    pairs = pd.read_csv(tmp_path / "report" / "conflict.csv")
    assert pairs[["crossval_similarity", "crossval_score"]].notna().all().all()
    a, b = pairs["label_a"].to_numpy(), pairs["label_b"].to_numpy()
    assert np.allclose(pairs["crossval_score"], conflict_score(evidence.pair_similarity(a, b),
                                                               evidence.pair_separation(a, b), a, b), atol=1e-4)
    assert "cross-validated" in (tmp_path / "report" / "report.md").read_text() and "Noise:" in output
    assert "ranked by same-person LLR: " in output and ", cross-validated reference: " in output
    invoke("noise", run, "--data", write_rec(tmp_path / "other", classes=15, per_class=2), "--out",
           tmp_path / "other-report")  # the run's evidence describes other data: not used
    other = json.loads((tmp_path / "other-report" / "summary.json").read_text())["noise"]
    assert other["ranking"].startswith("final features") and "crossval_agreement" not in other
    with pytest.raises(DataError, match="analysed data has 48 images of 6"):
        invoke("noise", folder_run, "--out", tmp_path / "x", "--crossval", run / "crossval")
