"""The HTML report builds from a tiny run, has every section with embedded figures, and survives missing inputs."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import EvaluateConfig, PipelineConfig
from ehrxdiff_core.evaluation.report import SECTIONS, build_report, write_report_caption
from ehrxdiff_core.evaluation.evaluate import evaluate
from ehrxdiff_core.evaluation.train_evaluator import train_evaluator

from test_eval_stages import build_world, tiny_evaluator_cfg, write_samples

torch.set_num_threads(1)


def test_report_from_a_tiny_run(tmp_path):
    world = build_world(tmp_path, n_subjects=20)
    train_evaluator(world["h5"], world["images"], tiny_evaluator_cfg(steps=30), tmp_path / "eval/evaluator", device="cpu",
                    truth=world["truth"])
    samples = {"ehrxdiff": write_samples(tmp_path / "samples/test", world["triplets"], world["df"], "target")}
    samples["image_only"] = write_samples(tmp_path / "samples/image_only/test", world["triplets"], world["df"], "previous")
    evaluate(samples, world["h5"], world["triplets"], tmp_path / "eval/evaluator",
             EvaluateConfig(bootstrap=50, min_label_positives=2, min_label_negatives=2), {"seed": 42},
             tmp_path / "eval/metrics.json", device="cpu", truth=world["truth"])
    for name in ("vae", "ldm"):
        (tmp_path / f"models/{name}").mkdir(parents=True)
        pd.DataFrame({"step": [10, 20, 30], "loss": [1.0, 0.5, 0.3]}).to_csv(tmp_path / f"models/{name}/metrics.csv", index=False)
    config = PipelineConfig().model_dump(mode="json")
    config["report"]["grid_pairs"] = 3
    out, figs = tmp_path / "eval/report.html", tmp_path / "eval/figures"
    build_report(tmp_path, config, out, figs)
    doc = out.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in doc
    assert len(re.findall(r"data:image/png;base64,", doc)) >= 3 * 3 + 3  # grid (3 rows x 3) + 3 curves
    assert "previous_image" in doc and "real_target" in doc and "Diff-subset macro AUROC" in doc
    assert "vs image_only" in doc and "oracle" in doc and "Label sets (fixed before scoring" in doc
    assert "partial correlation of predicted and true change" in doc and "paired patient-level bootstrap" in doc
    assert 'class="headline"' in doc
    assert "Not available" in doc and "models/clip/metrics.csv" in doc  # CLIP curve missing, said so
    assert "grid_pairs: 3" in doc and "torch</td>" in doc and "220045" in doc  # config, versions, top events
    assert "Pleural Effusion" in doc and "hidden severity" in doc
    assert (figs / "grid.png").exists() and (figs / "curve_evaluator.png").exists()
    assert "<script" not in doc and "src=\"http" not in doc  # self-contained


def test_report_with_nothing_says_what_is_missing(tmp_path):
    out = tmp_path / "report.html"
    build_report(tmp_path / "empty", {}, out)
    doc = out.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in doc
    assert doc.count("Not available") >= 4 + 3  # cohort, metrics, grid, events, 4 curves...


def test_caption_file(tmp_path):
    write_report_caption(tmp_path / "report/eval.rst")
    assert "previous image" in (tmp_path / "report/eval.rst").read_text()


def test_report_verdicts_follow_the_interval(tmp_path):
    """A difference whose interval includes 0 is printed as such, never coloured as a win."""
    import json

    world = build_world(tmp_path, n_subjects=20)
    train_evaluator(world["h5"], world["images"], tiny_evaluator_cfg(steps=30), tmp_path / "eval/evaluator", device="cpu")
    samples = {"ehrxdiff": write_samples(tmp_path / "samples/test", world["triplets"], world["df"], "target")}
    out = tmp_path / "eval/metrics.json"
    evaluate(samples, world["h5"], world["triplets"], tmp_path / "eval/evaluator",
             EvaluateConfig(bootstrap=20, min_label_positives=2, min_label_negatives=2), {}, out, device="cpu")
    m = json.loads(out.read_text())
    for e in m["comparisons"]["ehrxdiff_vs_previous_image"]:
        e.update(delta=0.034, ci95=[-0.041, 0.149], verdict="no significant difference")
    out.write_text(json.dumps(m))
    build_report(tmp_path, {}, tmp_path / "r.html")
    doc = (tmp_path / "r.html").read_text()
    assert "no significant difference" in doc and "[-0.041, +0.149]" in doc
    assert 'class="better"' not in doc and "beats" not in doc


@pytest.mark.parametrize("labelled", ["none", "some", "all"])
def test_report_cohort_section_with_no_some_or_all_labels(tmp_path, labelled):
    """A dataset without findings labels (all-NULL columns) or without ages still gets its report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ehrxdiff_core.labels import LABEL_COLUMNS

    (tmp_path / "cohort").mkdir()
    n = 6
    cols = {"dicom_id": [f"d{i}" for i in range(n)], "subject_id": pa.array([1, 1, 2, 2, 3, 3], pa.int64()),
            "split": ["train"] * 4 + ["test"] * 2, "age": pa.array([None] * n, pa.int64()),
            "gender": [None, None, "F", "F", "M", "M"]}
    for j, c in enumerate(LABEL_COLUMNS):
        given = labelled == "all" or (labelled == "some" and j % 2 == 0)
        cols[c] = pa.array([float(i % 2) for i in range(n)] if given else [None] * n, pa.float64())
    pq.write_table(pa.table(cols), tmp_path / "cohort/images.parquet")
    out = tmp_path / "r.html"
    build_report(tmp_path, {}, out)
    text = out.read_text()
    assert "Label prevalence" in text and "nan" not in text.lower().replace("nancy", "")
    assert "Demographics present" in text
    demo = text.split("Demographics present", 1)[1]
    assert "<td>6</td><td>6</td><td>2</td><td>3</td>" in demo  # images, without age, without sex, patients without age


def test_report_says_where_model_weights_started(tmp_path):
    import json

    (tmp_path / "models/vae").mkdir(parents=True)
    (tmp_path / "models/vae/import.json").write_text(json.dumps({"source": "/w/cheff_autoencoder.pt", "scaling_factor": 0.18215}))
    (tmp_path / "models/clip").mkdir(parents=True)
    (tmp_path / "models/clip/clip_config.json").write_text(json.dumps({"vision_init": "random"}))
    pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}).to_csv(tmp_path / "models/clip/metrics.csv", index=False)
    build_report(tmp_path, {}, tmp_path / "r.html")
    doc = (tmp_path / "r.html").read_text()
    assert "Imported from /w/cheff_autoencoder.pt (not trained here); latent scale 0.18215" in doc
    assert "models/vae/metrics.csv" not in doc  # an imported autoencoder has no curve to miss
    assert "ViT initialised from random weights" in doc
    (tmp_path / "models/clip/clip_config.json").write_text(json.dumps({"vision_init": "/w/clip-vit-base-patch32"}))
    (tmp_path / "models/vae/import.json").unlink()
    (tmp_path / "models/vae/config.json").write_text(json.dumps({"scaling_factor": 0.9123}))
    build_report(tmp_path, {}, tmp_path / "r.html")
    doc = (tmp_path / "r.html").read_text()
    assert "ViT initialised from /w/clip-vit-base-patch32" in doc and "random weights" not in doc
    assert "Trained here (L1 + KL loss); latent scale 0.91230" in doc
