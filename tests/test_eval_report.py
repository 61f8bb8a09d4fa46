"""The HTML report builds from a tiny run, opens only the paths it is given, has every section with embedded
figures, and survives missing inputs."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import REPO
from ehrxdiff_core.config import EvaluateConfig, PipelineConfig, ReportConfig, write_resolved_config
from ehrxdiff_core.evaluation.controls import control_previous_blur
from ehrxdiff_core.evaluation.evaluate import evaluate
from ehrxdiff_core.evaluation.report import SECTIONS, ReportInputs, build_report
from ehrxdiff_core.evaluation.train_evaluator import train_evaluator
from test_eval_stages import build_world, tiny_evaluator_cfg, write_samples

torch.set_num_threads(1)

CFG = ReportConfig.from_pipeline(PipelineConfig())


def inputs_under(results: Path, split: str = "test", size: int = 32) -> ReportInputs:
    """The report's inputs where the pipeline writes them under a results folder."""
    return ReportInputs(
        metrics=results / "eval/metrics.json",
        vae_quality=results / "eval/vae_quality.json",
        blur_control=results / f"samples/previous_blur/{split}",
        samples=results / f"samples/{split}",
        images=results / f"images/cxr_{size}.h5",
        cohort_images=results / "cohort/images.parquet",
        cohort_triplets=results / "cohort/triplets.parquet",
        triplets=results / "events/triplets.parquet",
        events=results / "events/events.parquet",
        config=results / "config.resolved.yaml",
        vae=results / "models/vae",
        clip=results / "models/clip",
        ldm=results / "models/ldm",
        evaluator=results / "eval/evaluator",
    )


def relocate(inputs: ReportInputs, dest: Path, copy: bool = False) -> ReportInputs:
    """Move (or copy) every input that exists to `dest/<input>-elsewhere/<input><suffix>`: a layout unlike
    `results/`, with other file names (`images-elsewhere/images.h5`, not `images/cxr_32.h5`)."""
    moved = {}
    for f in fields(inputs):
        src = getattr(inputs, f.name)
        target = dest / f"{f.name}-elsewhere" / f"{f.name}{src.suffix}"
        target.parent.mkdir(parents=True)
        if src.is_dir() and copy:
            shutil.copytree(src, target)
        elif src.exists():
            (shutil.copy2 if copy else shutil.move)(src, target)
        moved[f.name] = target
    return ReportInputs(**moved)


def demo_shaped_run(root: Path, grid_pairs: int = 8) -> tuple[ReportInputs, ReportConfig]:
    """A tiny run under the results folder `root` with every input of the report: evaluator, metrics with
    controls and truth, the blur control, the autoencoder gate, curves of all four models, the resolved config."""
    world = build_world(root, n_subjects=20)
    inputs = inputs_under(root)
    train_evaluator(
        world["h5"], world["images"], tiny_evaluator_cfg(steps=30), inputs.evaluator, device="cpu", truth=world["truth"]
    )
    samples = {"ehrxdiff": write_samples(inputs.samples, world["triplets"], world["df"], "target")}
    samples["image_only"] = write_samples(root / "samples/image_only/test", world["triplets"], world["df"], "previous")
    control_previous_blur(world["h5"], world["triplets"], inputs.samples, "test", inputs.blur_control)
    samples["previous_blur"] = inputs.blur_control
    evaluate(
        samples,
        world["h5"],
        world["triplets"],
        inputs.evaluator,
        EvaluateConfig(bootstrap=50, min_label_positives=2, min_label_negatives=2),
        {"seed": 42},
        inputs.metrics,
        device="cpu",
        truth=world["truth"],
    )
    scores = {"auroc": {"macro": 0.81, "micro": 0.84}, "sex_auroc": 0.97, "age_pearson_r": 0.9}
    inputs.vae_quality.write_text(
        json.dumps(
            {
                "split": "valid",
                "n_images": 12,
                "real": scores,
                "reconstructed": {**scores, "age_pearson_r": 0.5},
                "gate": {"passed": False, "reasons": ["age r 0.50 < 0.9"], "rule": "reconstructed within 0.03 of real"},
            }
        )
    )
    for folder in (inputs.vae, inputs.clip, inputs.ldm):
        folder.mkdir(parents=True)
        pd.DataFrame({"step": [10, 20, 30], "loss": [1.0, 0.5, 0.3]}).to_csv(folder / "metrics.csv", index=False)
    (inputs.vae / "config.json").write_text(json.dumps({"scaling_factor": 0.9123}))
    (inputs.clip / "clip_config.json").write_text(json.dumps({"vision_init": "random"}))
    config = PipelineConfig(report={"grid_pairs": grid_pairs})
    write_resolved_config(config.model_dump(mode="json"), inputs.config)
    return inputs, ReportConfig.from_pipeline(config)


def test_report_reads_only_the_paths_it_is_given(tmp_path):
    """Every input moved to a layout unlike `results/` and the results folder deleted: the report still has
    everything, so it opened no path besides its inputs."""
    inputs, cfg = demo_shaped_run(tmp_path / "results", grid_pairs=3)
    shutil.rmtree(inputs.clip)  # one model without a curve: said so
    inputs = relocate(inputs, tmp_path / "moved")
    shutil.rmtree(tmp_path / "results")
    out = tmp_path / "report.html"
    build_report(inputs, cfg, out)
    doc = out.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in doc
    assert doc.count("Not available") == 1 and "clip-elsewhere/clip/metrics.csv" in doc
    assert len(re.findall(r"data:image/png;base64,", doc)) >= 3 * 3 + 3  # grid (3 rows x 3) + 3 curves
    assert "<p>3 test pairs" in doc
    assert "previous_image" in doc and "real_target" in doc and "Diff-subset macro AUROC" in doc
    assert "vs image_only" in doc and "oracle" in doc and "Label sets (fixed before scoring" in doc
    assert "partial correlation of predicted and true change" in doc and "paired patient-level bootstrap" in doc
    assert 'class="headline"' in doc
    assert "Autoencoder quality gate" in doc and "Blur control: Gaussian sigma" in doc
    assert "Pairs before dropping pairs without events" in doc and "Events per source table" in doc
    assert "grid_pairs: 3" in doc and "torch</td>" in doc and "220045" in doc  # config, versions, top events
    assert "Pleural Effusion" in doc and "hidden severity" in doc
    assert "Trained here (L1 + KL loss); latent scale 0.91230" in doc
    for f in fields(inputs):  # the Configuration section lists what was read
        assert str(getattr(inputs, f.name)) in doc, f.name
    assert "<script" not in doc and 'src="http' not in doc  # self-contained


def test_report_with_nothing_says_what_is_missing(tmp_path):
    out = tmp_path / "report.html"
    build_report(inputs_under(tmp_path / "empty"), CFG, out)
    doc = out.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in doc
    # cohort (4 tables), metrics, grid, 4 curves, config
    assert doc.count("Not available") >= 4 + 1 + 1 + 4 + 1


def test_report_config_comes_from_the_run_config():
    cfg = ReportConfig.from_pipeline(PipelineConfig(sample={"split": "valid"}, report={"top_events": 2}))
    assert cfg.split == "valid" and cfg.top_events == 2 and cfg.grid_pairs == PipelineConfig().report.grid_pairs
    with pytest.raises(ValueError):  # no default of its own: every value is the run's
        ReportConfig(grid_pairs=8, top_events=5)


def test_rule_report_declares_every_input_of_the_report():
    """The rule's named inputs are ReportInputs' fields (and the code files): the workflow script passes them
    by name, and Snakemake sees each path the report opens."""
    smk = (REPO / "rules/evaluate.smk").read_text()
    block = smk.split("\nrule report:\n", 1)[1].split("\n    output:", 1)[0]
    named = set(re.findall(r"^        (\w+)=", block, flags=re.M))
    assert named == {f.name for f in fields(ReportInputs)} | {"code"}
    assert "params.results" not in (REPO / "workflow_scripts/report.py").read_text()


def test_report_verdicts_follow_the_interval(tmp_path):
    """A difference whose interval includes 0 is printed as such, never coloured as a win."""
    world = build_world(tmp_path, n_subjects=20)
    inputs = inputs_under(tmp_path)
    train_evaluator(world["h5"], world["images"], tiny_evaluator_cfg(steps=30), inputs.evaluator, device="cpu")
    samples = {"ehrxdiff": write_samples(inputs.samples, world["triplets"], world["df"], "target")}
    evaluate(
        samples,
        world["h5"],
        world["triplets"],
        inputs.evaluator,
        EvaluateConfig(bootstrap=20, min_label_positives=2, min_label_negatives=2),
        {},
        inputs.metrics,
        device="cpu",
    )
    m = json.loads(inputs.metrics.read_text())
    for e in m["comparisons"]["ehrxdiff_vs_previous_image"]:
        e.update(delta=0.034, ci95=[-0.041, 0.149], verdict="no significant difference")
    m["methods"]["real_target"]["intervals"]["auroc_all_macro"].update(value=0.904, ci95=[0.809, 0.967])
    m["methods"]["ehrxdiff"]["intervals"]["auroc_all_macro"].update(ci95=None, reason="a reason shown on hover")
    assert len(m["methods"]["ehrxdiff"]["age_pearson_r_per_seed"]) == 1  # one seed: nothing printed beside it
    m["methods"]["ehrxdiff"]["age_pearson_r_per_seed"] = [{"value": 0.612, "n": 9}, {"value": 0.547, "n": 9}]
    inputs.metrics.write_text(json.dumps(m))
    build_report(inputs, CFG, tmp_path / "r.html")
    doc = (tmp_path / "r.html").read_text()
    assert "no significant difference" in doc and "[-0.041, +0.149]" in doc
    # each method's own interval, unsigned, and a missing one with its reason
    assert "Headline metrics of every method, with 95 % intervals" in doc and "0.904<br>[0.809, 0.967]" in doc
    assert 'title="a reason shown on hover">no interval' in doc
    assert 'class="better"' not in doc and "beats" not in doc
    assert doc.count("single seeds: 0.612, 0.547") == 1  # the model's age r of single samples, beside the average


@pytest.mark.parametrize("labelled", ["none", "some", "all"])
def test_report_cohort_section_with_no_some_or_all_labels(tmp_path, labelled):
    """A dataset without findings labels (all-NULL columns) or without ages still gets its report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ehrxdiff_core.labels import LABEL_COLUMNS

    (tmp_path / "cohort").mkdir()
    n = 6
    cols = {
        "dicom_id": [f"d{i}" for i in range(n)],
        "subject_id": pa.array([1, 1, 2, 2, 3, 3], pa.int64()),
        "split": ["train"] * 4 + ["test"] * 2,
        "age": pa.array([None] * n, pa.int64()),
        "gender": [None, None, "F", "F", "M", "M"],
    }
    for j, c in enumerate(LABEL_COLUMNS):
        given = labelled == "all" or (labelled == "some" and j % 2 == 0)
        cols[c] = pa.array([float(i % 2) for i in range(n)] if given else [None] * n, pa.float64())
    pq.write_table(pa.table(cols), tmp_path / "cohort/images.parquet")
    out = tmp_path / "r.html"
    build_report(inputs_under(tmp_path), CFG, out)
    text = out.read_text()
    assert "Label prevalence" in text and "nan" not in text.lower().replace("nancy", "")
    assert "Demographics present" in text
    demo = text.split("Demographics present", 1)[1]
    # images, without age, without sex, patients without age
    assert "<td>6</td><td>6</td><td>2</td><td>3</td>" in demo


def test_report_says_where_model_weights_started(tmp_path):
    inputs = inputs_under(tmp_path)
    inputs.vae.mkdir(parents=True)
    (inputs.vae / "import.json").write_text(
        json.dumps({"source": "/w/cheff_autoencoder.pt", "scaling_factor": 0.18215})
    )
    inputs.clip.mkdir(parents=True)
    (inputs.clip / "clip_config.json").write_text(json.dumps({"vision_init": "random"}))
    pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}).to_csv(inputs.clip / "metrics.csv", index=False)
    build_report(inputs, CFG, tmp_path / "r.html")
    doc = (tmp_path / "r.html").read_text()
    assert "Imported from /w/cheff_autoencoder.pt (not trained here); latent scale 0.18215" in doc
    assert "models/vae/metrics.csv" not in doc  # an imported autoencoder has no curve to miss
    assert "ViT initialised from random weights" in doc
    (inputs.clip / "clip_config.json").write_text(json.dumps({"vision_init": "/w/clip-vit-base-patch32"}))
    (inputs.vae / "import.json").unlink()
    (inputs.vae / "config.json").write_text(json.dumps({"scaling_factor": 0.9123}))
    build_report(inputs, CFG, tmp_path / "r.html")
    doc = (tmp_path / "r.html").read_text()
    assert "ViT initialised from /w/clip-vit-base-patch32" in doc and "random weights" not in doc
    assert "Trained here (L1 + KL loss); latent scale 0.91230" in doc
