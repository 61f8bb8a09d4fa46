"""End-to-end tests of the evaluation stages on a tiny hand-built world (also its builders for other eval tests)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ehrxdiff_core.artifacts.metrics import read_metrics
from ehrxdiff_core.config import EvaluateConfig, EvaluatorConfig, TrainLoop
from ehrxdiff_core.evaluation.evaluate import evaluate
from ehrxdiff_core.evaluation.evaluator import load_evaluator, predict
from ehrxdiff_core.evaluation.inputs import InputError, read_images
from ehrxdiff_core.evaluation.train_evaluator import train_evaluator
from ehrxdiff_core.labels import EVAL_LABELS, LABEL_COLUMNS

torch.set_num_threads(1)

SIZE = 32
LEARNABLE = ("pleural_effusion", "cardiomegaly")  # drawn into the pixels; every other label is noise


def render(labels: dict, male: bool, age: float, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A toy 'X-ray': effusion = bright bottom band, cardiomegaly = bright central disc, male = top-left bar."""
    img = rng.normal(70, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    if labels["pleural_effusion"] == 1:
        img[yy > 0.72 * size] += 110
    if labels["cardiomegaly"] == 1:
        img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.22 * size) ** 2] += 100
    if male:
        img[2:6, 2:14] += 140
    img += (age - 55) * 0.8
    return np.clip(img, 0, 255).astype(np.uint8)


def build_world(root: Path, n_subjects: int = 60, imgs_per_subject: int = 3, seed: int = 0) -> dict:
    """images/cxr_32.h5, cohort/images.parquet, events/{triplets,events}.parquet, synthetic/truth.parquet."""
    rng = np.random.default_rng(seed)
    rows, pixels, truth = [], [], []
    for s in range(n_subjects):
        split = "train" if s < int(0.6 * n_subjects) else ("valid" if s < int(0.7 * n_subjects) else "test")
        male, age = bool(rng.random() < 0.5), float(rng.uniform(25, 85))
        for k in range(imgs_per_subject):
            labels = {l: float(rng.random() < 0.5) for l in LABEL_COLUMNS}
            for l in LABEL_COLUMNS:
                if l not in LEARNABLE and rng.random() < 0.2:
                    labels[l] = np.nan  # blank/uncertain
            did = f"d{s:03d}_{k}"
            pixels.append(render(labels, male, age, rng))
            rows.append(
                {
                    "dicom_id": did,
                    "subject_id": 1000 + s,
                    "study_id": 5000 + 10 * s + k,
                    "hadm_id": 2000 + s,
                    "split": split,
                    "age": age,
                    "gender": "M" if male else "F",
                    "race": "WHITE",
                    **labels,
                }
            )
            truth.append(
                {
                    "dicom_id": did,
                    "subject_id": 1000 + s,
                    "time": float(k),
                    "pleural_effusion": labels["pleural_effusion"] * 2 + rng.normal(0, 0.3),
                    "cardiomegaly": labels["cardiomegaly"] + rng.normal(0, 0.3),
                    "support_devices": rng.random(),
                }
            )
    images = pd.DataFrame(rows)
    for d in ("images", "cohort", "events", "synthetic"):
        (root / d).mkdir(parents=True, exist_ok=True)
    with h5py.File(root / f"images/cxr_{SIZE}.h5", "w") as f:
        f.create_dataset("pixels", data=np.stack(pixels))
        f.create_dataset("dicom_id", data=images["dicom_id"].tolist(), dtype=h5py.string_dtype("utf-8"))
        f.attrs["size"], f.attrs["n_bad"] = SIZE, 0
    images.to_parquet(root / "cohort/images.parquet")
    pd.DataFrame(truth).to_parquet(root / "synthetic/truth.parquet")
    pairs, events = [], []
    for sid, g in images.groupby("subject_id"):
        g = g.reset_index(drop=True)
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                prev, trg = g.iloc[i], g.iloc[j]
                pid = f"{trg.dicom_id}_{prev.dicom_id}"
                pairs.append(
                    {
                        "pair_id": pid,
                        "subject_id": sid,
                        "hadm_id": prev.hadm_id,
                        "prev_dicom_id": prev.dicom_id,
                        "trg_dicom_id": trg.dicom_id,
                        "gap_hours": 6.0 * (j - i),
                        "split": prev.split,
                        "age": prev.age,
                        "gender": prev.gender,
                        "race": prev.race,
                        "n_events": 3,
                        **{f"prev_{l}": prev[l] for l in LABEL_COLUMNS},
                        **{f"trg_{l}": trg[l] for l in LABEL_COLUMNS},
                    }
                )
                for pos, code in enumerate(["220045", "220045", "furosemide"]):
                    events.append(
                        {
                            "pair_id": pid,
                            "position": pos,
                            "minutes_from_prev": 10.0 * pos,
                            "source": "chartevents" if code.isdigit() else "prescriptions",
                            "code": code,
                            "text": f"chartevents itemid {code} valuenum 88"
                            if code.isdigit()
                            else "prescriptions drug furosemide",
                        }
                    )
    pd.DataFrame(pairs).to_parquet(root / "events/triplets.parquet")
    pd.DataFrame(pairs).drop(columns="n_events").to_parquet(root / "cohort/triplets.parquet")
    pd.DataFrame(events).to_parquet(root / "events/events.parquet")
    return {
        "h5": root / f"images/cxr_{SIZE}.h5",
        "images": root / "cohort/images.parquet",
        "triplets": root / "events/triplets.parquet",
        "truth": root / "synthetic/truth.parquet",
        "df": images,
    }


def write_samples(
    folder: Path,
    triplets: Path,
    images_df: pd.DataFrame,
    mode: str,
    split: str = "test",
    seed: int = 0,
    n_seeds: int = 1,
) -> Path:
    """A samples folder: `mode='target'` re-renders the target's findings (a good generator), 'previous' the
    previous image's.

    Seed k > 0 of a pair is `seed{k}/{pair_id}.png` (the samples folder layout), drawn with fresh noise.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    trip = pd.read_parquet(triplets)
    trip = trip[trip["split"] == split]
    lookup = images_df.set_index("dicom_id")
    rows = []
    for k in range(n_seeds):
        if k:
            (folder / f"seed{k}").mkdir(exist_ok=True)
        for r in trip.itertuples():
            src = lookup.loc[r.trg_dicom_id if mode == "target" else r.prev_dicom_id]
            img = render({l: src[l] for l in LABEL_COLUMNS}, src["gender"] == "M", src["age"], rng)
            rel = f"{r.pair_id}.png" if k == 0 else f"seed{k}/{r.pair_id}.png"
            Image.fromarray(img, mode="L").save(folder / rel)
            rows.append(
                {
                    "pair_id": r.pair_id,
                    "seed_index": k,
                    "seed": 42 + k,
                    "path": rel,
                    "sampler": "ddim",
                    "steps": 10,
                    "guidance": 1.0,
                    "seconds": 0.1,
                }
            )
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder


def tiny_evaluator_cfg(steps: int = 300) -> EvaluatorConfig:
    return EvaluatorConfig(
        arch="small_cnn", width=8, train=TrainLoop(steps=steps, batch_size=32, lr=3e-3, log_every=10, seed=0)
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    world = build_world(root)
    summary = train_evaluator(
        world["h5"], world["images"], tiny_evaluator_cfg(), root / "eval/evaluator", device="cpu", truth=world["truth"]
    )
    return root, world, summary


def test_evaluate_scores_methods_side_by_side(trained):
    root, world, _ = trained
    samples = {"ehrxdiff": write_samples(root / "samples/test", world["triplets"], world["df"], "target", n_seeds=2)}
    samples["image_only"] = write_samples(
        root / "samples_imgonly/test", world["triplets"], world["df"], "previous", seed=1
    )
    out = root / "eval/metrics.json"
    cfg = EvaluateConfig(bootstrap=200, min_label_positives=5, min_label_negatives=5)
    res = evaluate(
        samples,
        world["h5"],
        world["triplets"],
        root / "eval/evaluator",
        cfg,
        {"git": "abc"},
        out,
        device="cpu",
        truth=world["truth"],
    )
    mf = read_metrics(out)
    assert mf.model_dump(mode="json") == res
    m = mf.methods
    assert list(m) == ["ehrxdiff", "image_only", "previous_image", "real_target", "oracle"]
    assert {n: v.kind for n, v in m.items()} == {
        "ehrxdiff": "model",
        "image_only": "control",
        "previous_image": "control",
        "real_target": "ceiling",
        "oracle": "ceiling",
    }
    n_test = int((pd.read_parquet(world["triplets"])["split"] == "test").sum())
    assert mf.settings["n_pairs"] == n_test and all(v.n_pairs == n_test for v in m.values())
    assert m["ehrxdiff"].n_seeds == {"min": 2, "max": 2} and m["image_only"].n_seeds == {"min": 1, "max": 1}
    # label sets are fixed from labels and truth before scoring, and every method's macro uses them
    sets = mf.label_sets
    assert "pleural_effusion" in sets.auroc["diff"] and all("pleural_effusion" in v for v in sets.truth.values())
    for v in m.values():
        assert v.auroc["diff"].macro.label_set == sets.auroc["diff"] and v.auroc["diff"].macro.fixed
    # a generator that renders the target's findings beats copying the previous image where findings changed
    comp = {e.metric: e for e in mf.comparisons["ehrxdiff_vs_previous_image"]}
    assert set(comp) == set(mf.headline_metrics)
    diff = comp["auroc_diff_macro"]
    assert diff.delta > 0.1 and diff.ci95[0] > 0 and diff.verdict == "better" and diff.n_boot == 200
    assert diff.model_value == m["ehrxdiff"].auroc["diff"].macro.value
    assert set(mf.comparisons) == {"ehrxdiff_vs_image_only", "ehrxdiff_vs_previous_image"}
    assert {e.metric: e.verdict for e in mf.comparisons["ehrxdiff_vs_image_only"]}["auroc_diff_macro"] == "better"
    for lab in LEARNABLE:  # on Diff, the previous image shows the opposite finding: AUROC near 0
        real, prev = (m[k].auroc["diff"].per_label[lab] for k in ("real_target", "previous_image"))
        assert real.value > 0.9 and prev.value < 0.2 and real.n_pos > 0 and real.n_neg > 0
        assert m["previous_image"].auroc["same"].per_label[lab].value > 0.9
    # truth metrics: the copy predicts no change; the oracle is the ceiling
    t_prev, t_model, t_oracle = (
        m[k].truth.per_finding["pleural_effusion"] for k in ("previous_image", "ehrxdiff", "oracle")
    )
    assert t_prev.partial_r.value == 0.0 and t_oracle.partial_r.value == pytest.approx(1.0)
    assert (
        t_oracle.crossing_auroc.value == 1.0
        and t_prev.crossing_auroc.value < 0.3
        and t_model.crossing_auroc.value > 0.8
    )
    assert t_model.partial_r.value > 0.5
    assert m["oracle"].sex_auroc.value is None and not m["oracle"].fid["evaluator"].computed
    assert mf.truth.used and "pleural_effusion" in mf.truth.dynamic
    gen = m["ehrxdiff"].generation
    assert gen["seeds"] == [42] and gen["sampler"] == ["ddim"] and gen["seed_indices"] == [0, 1]
    assert gen["compose"] is None  # a manifest written before the compose columns existed still reads
    assert m["previous_image"].generation is None
    # realism: the ceiling's distance is the floor itself; inception not configured -> recorded with the key
    fd = m["real_target"].fid["evaluator"]
    assert fd.computed and fd.value == pytest.approx(fd.floor, rel=1e-6)
    assert m["ehrxdiff"].fid["evaluator"].floor == pytest.approx(fd.floor)
    assert not m["ehrxdiff"].fid["inception"].computed
    assert "evaluate.inception_weights" in m["ehrxdiff"].fid["inception"].reason
    assert "evaluate.xrv_weights" in m["ehrxdiff"].fid["xrv"].reason
    assert m["real_target"].sex_auroc.value > 0.9
    assert m["real_target"].age_pearson_r.value > 0.5
    # the age r of single samples: each seed's own reads, beside the seed-averaged value
    model, meta = load_evaluator(root / "eval/evaluator")
    trip = pd.read_parquet(world["triplets"])
    trip = trip[trip["split"] == "test"].sort_values("pair_id")
    ages = trip["age"].to_numpy(float)
    per_seed = m["ehrxdiff"].age_pearson_r_per_seed
    assert len(per_seed) == 2
    for k, entry in enumerate(per_seed):
        rel = [f"{p}.png" if k == 0 else f"seed{k}/{p}.png" for p in trip["pair_id"]]
        reads = predict(model, meta, read_images(samples["ehrxdiff"], rel, SIZE))["age"]
        assert entry.value == pytest.approx(np.corrcoef(reads, ages)[0, 1], abs=1e-9) and entry.n == len(trip)
    assert per_seed[0].value != per_seed[1].value  # the seeds are drawn with their own noise
    one = m["image_only"].age_pearson_r_per_seed  # one seed: its r is the averaged one
    assert len(one) == 1 and one[0].value == pytest.approx(m["image_only"].age_pearson_r.value, abs=1e-12)
    assert m["previous_image"].age_pearson_r_per_seed is None and m["oracle"].age_pearson_r_per_seed is None
    assert "NaN" not in out.read_text()
    # every method, the ceilings included, carries its own interval for each headline metric
    for name, v in m.items():
        assert set(v.intervals) == set(mf.headline_metrics), name
        for metric, iv in v.intervals.items():
            # the interval's value comes from the bootstrap's fast rank AUROC, the block's from sklearn: equal
            # up to summation order (evaluate refuses a gap over 1e-9), which differs between CPUs
            block = mf.value(name, metric)
            assert (iv.value is None) == (block is None) and iv.n_boot == 200, (name, metric)
            if block is not None:
                assert iv.value == pytest.approx(block, rel=0, abs=1e-9), (name, metric)
            if iv.value is not None:
                assert iv.ci95[0] <= iv.value <= iv.ci95[1], (name, metric, iv)
    assert m["oracle"].intervals["truth_partial_r_macro"].ci95 == [pytest.approx(1.0), pytest.approx(1.0)]
    assert m["previous_image"].intervals["truth_partial_r_macro"].ci95 == [0.0, 0.0]
    assert m["real_target"].intervals["auroc_diff_macro"].ci95[0] > 0.8


def test_evaluate_without_truth_says_why(trained, tmp_path):
    root, world, _ = trained
    folder = write_samples(tmp_path / "s", world["triplets"], world["df"], "target")
    res = evaluate(
        {"ehrxdiff": folder},
        world["h5"],
        world["triplets"],
        root / "eval/evaluator",
        EvaluateConfig(bootstrap=20, min_label_positives=5, min_label_negatives=5),
        {},
        tmp_path / "m.json",
        device="cpu",
    )
    mf = read_metrics(tmp_path / "m.json")
    assert "oracle" not in mf.methods and not mf.truth.used and "real data" in mf.truth.reason
    assert not mf.methods["ehrxdiff"].truth.computed
    comp = {e.metric: e for e in mf.comparisons["ehrxdiff_vs_previous_image"]}
    assert comp["truth_partial_r_macro"].verdict == "not computable" and comp["auroc_diff_macro"].ci95 is not None
    assert mf.label_sets.candidates == list(EVAL_LABELS) and res["model"] == "ehrxdiff"


def test_evaluator_quality_and_truth_recovery(trained):
    root, _, summary = trained
    q = json.loads((root / "eval/evaluator/quality.json").read_text())
    test = q["splits"]["test"]
    assert test["auroc"]["per_label"]["pleural_effusion"]["value"] > 0.9
    assert summary["test_macro_auroc"] == test["auroc"]["macro"]["value"]
    tr = q["truth_recovery"]["findings"]
    assert tr["pleural_effusion"]["spearman"]["value"] > 0.6
    assert tr["support_devices"]["computed"] is False  # no evaluator head for it
    for name in ("model.safetensors", "config.json", "metrics.csv", "loss.png", "quality.json"):
        assert (root / "eval/evaluator" / name).exists()


def test_evaluate_rejects_wrong_sample_size(trained, tmp_path):
    root, world, _ = trained
    folder = write_samples(tmp_path / "s", world["triplets"], world["df"], "target")
    first = next(folder.glob("*.png"))
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(first)
    with pytest.raises(InputError, match="expected 32x32"):
        evaluate(
            {"ehrxdiff": folder},
            world["h5"],
            world["triplets"],
            root / "eval/evaluator",
            EvaluateConfig(),
            {},
            tmp_path / "m.json",
            device="cpu",
        )
    assert not (tmp_path / "m.json").exists()


def test_evaluate_missing_split_is_clear(trained, tmp_path):
    root, world, _ = trained
    folder = write_samples(tmp_path / "s", world["triplets"], world["df"], "target")
    with pytest.raises(InputError, match="split == 'nosuch'"):
        evaluate(
            {"ehrxdiff": folder},
            world["h5"],
            world["triplets"],
            root / "eval/evaluator",
            EvaluateConfig(),
            {},
            tmp_path / "m.json",
            device="cpu",
            split="nosuch",
        )


assert set(LEARNABLE) <= set(EVAL_LABELS)
