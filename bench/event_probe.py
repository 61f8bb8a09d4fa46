r"""Do the event representations the models are fed carry the true change? A linear probe, synthetic world only.

The truth metrics of `evaluate` ask whether a *generated image* follows the events. This asks the question
one step earlier: given what the model is conditioned on, how well could anything predict the change? For
every test pair it predicts the true change of each dynamic finding's hidden severity (`synthetic/truth.parquet`)
with ridge regressions fitted on the train pairs, from:

- `previous state`: the previous image's hidden severities of every finding (and their squares) — what a
  perfect reading of the previous image gives, the image-only analogue;
- `+ event texts`: those and the mean of the pair's event text embeddings (`embeddings/events.h5`);
- `+ texts and numbers`: those and the numeric features beside each embedding (`text.numeric_features`):
  their means, the embeddings weighted by each feature (so a value belongs to its item), the summed
  embedding (so counts of treatments survive) and the number of events;
- `+ CLIP event encoder`: the previous state and the masked mean and max over events of the trained CLIP
  model's event-encoder outputs (`models/clip`), the tokens the LDM's adapter starts from;
- `+ LDM event encoder`: the same with the event encoder as the LDM left it after joint training
  (`models/ldm`, `adapter_ema/` when `sample.use_ema`, else `adapter/`), when the run has one.

Each row is scored like the generated images: the partial r of predicted and true change given the previous
severity of that finding (`metrics.partial_correlation`), its macro over the label set `evaluate` fixes
(`comparisons.truth_label_sets` over the trained evaluator's labels), and the macro's 95 % patient-level
interval (`evaluate.bootstrap` resamples of the test patients, `comparisons.bootstrap`). A ridge on pooled
features is a lower bound on what the representation holds; the gap between `previous state` and the event
rows is what the events add. Paired differences (same resamples): each event row against `previous state`, and
the LDM's event encoder against the CLIP one it started from.

    snakemake results/embeddings/events.h5 results/events/triplets.parquet results/models/clip \
        --profile profiles/local --configfile configs/science.yaml
    python bench/event_probe.py --configfile configs/science.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALPHAS = np.logspace(-2, 5, 15)


def pooled_store_features(store, pair_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: (mean text embedding, the text-and-number features) from an `EmbeddingStore`."""
    text = store.embedding.astype(np.float32)
    num = (
        store.numeric.astype(np.float32) * float(store.numeric_attrs["scale"])
        if store.numeric is not None
        else np.zeros((len(text), 0), np.float32)
    )
    index = {p: i for i, p in enumerate(store.pair_ids)}
    width = num.shape[1] + text.shape[1] * (num.shape[1] + 1) + 1
    mean_text = np.zeros((len(pair_ids), text.shape[1]), np.float32)
    extra = np.zeros((len(pair_ids), width), np.float32)
    for i, p in enumerate(pair_ids):
        j = index[p]
        rows = store.rows[store.offsets[j] : store.offsets[j + 1]]
        if len(rows) == 0:
            continue
        t, n = text[rows], num[rows]
        mean_text[i] = t.mean(0)
        weighted = [(t * n[:, [k]]).mean(0) for k in range(n.shape[1])]
        extra[i] = np.concatenate([n.mean(0), *weighted, t.sum(0) / 100.0, [np.log1p(len(rows))]])
    return mean_text, extra


def encoder_features(tab, reader, pair_ids: list[str], batch: int = 64) -> np.ndarray:
    """Per pair, the masked mean and the masked max of a trained event encoder's per-event outputs
    (`TabularEncoder.tokens`, what the adapter projects into cross-attention)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(pair_ids), batch):
            chunk = pair_ids[i : i + batch]
            width = max(1, max(reader.n_events(p) for p in chunk))
            events, mask = reader.batch(chunk, width)
            tok = tab.tokens(events, mask).float()
            m = mask.unsqueeze(-1)
            mean = (tok * m).sum(1) / m.sum(1).clamp(min=1)
            top = tok.masked_fill(~m, float("-inf")).amax(1)
            top = torch.where(mask.any(1, keepdim=True), top, torch.zeros_like(top))
            out.append(torch.cat([mean, top], dim=1).numpy())
    return np.concatenate(out)


def ldm_tab(ldm_dir: Path, clip, use_ema: bool):
    """The LDM's event encoder after joint training: the CLIP encoder's weights replaced by the adapter's
    (the EMA adapter when sampling uses it and the run has one, as `load_ldm`)."""
    from safetensors.torch import load_file

    suffix = "_ema" if use_ema and (ldm_dir / "adapter_ema").exists() else ""
    state = load_file(ldm_dir / f"adapter{suffix}" / "model.safetensors")
    tab_state = {k[len("tab.") :]: v for k, v in state.items() if k.startswith("tab.")}
    if not tab_state:
        return None
    clip.tab.load_state_dict(tab_state)
    return clip.tab


def main() -> None:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ehrxdiff_core.artifacts.text import read_embedding_store
    from ehrxdiff_core.config import load_config, read_config_files
    from ehrxdiff_core.evaluation import comparisons, metrics
    from ehrxdiff_core.evaluation.inputs import read_triplets
    from ehrxdiff_core.evaluation.truth import label_thresholds, pair_truth
    from ehrxdiff_core.models.clip import ClipModel
    from ehrxdiff_core.models.datasets import open_embedding_reader

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", nargs="*", default=[], help="the run's config files (default: config.yaml)")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--split", default="test", help="the split scored (the probes are fitted on train)")
    args = ap.parse_args()
    if args.split == "train":
        sys.exit("--split: the probes are fitted on train; score valid or test")
    cfg = load_config(read_config_files(args.configfile), check_paths=False)
    ev, res = cfg.evaluate, args.results
    truth_path = res / "synthetic/truth.parquet"
    if not truth_path.exists():
        sys.exit(f"{truth_path}: no hidden severities (a synthetic world's truth table); the probe needs them")
    t0 = time.time()
    meta = res / "eval/evaluator/config.json"  # evaluate scores the evaluator's labels
    labels = tuple(json.loads(meta.read_text())["labels"]) if meta.exists() else tuple(label_thresholds())
    store = read_embedding_store(res / "embeddings/events.h5")
    reader = open_embedding_reader(res / "embeddings/events.h5")
    trip = read_triplets(res / "events/triplets.parquet", labels)
    trip = trip[trip["pair_id"].map(lambda p: p in reader)]
    parts = {s: trip[trip["split"] == s].sort_values("pair_id").reset_index(drop=True) for s in ("train", args.split)}
    truth = {s: pair_truth(truth_path, parts[s], labels) for s in parts}
    pt = truth[args.split]
    sets = comparisons.truth_label_sets(pt, ev.min_label_positives, ev.min_label_negatives)
    ok = {s: ~np.isnan(truth[s].prev).any(1) & ~np.isnan(truth[s].trg).any(1) for s in parts}

    feats: dict[str, dict[str, np.ndarray]] = {}
    for s in parts:
        ids = parts[s]["pair_id"].tolist()
        prev = np.nan_to_num(truth[s].prev)
        state = np.concatenate([prev, prev**2], axis=1)
        mean_text, extra = pooled_store_features(store, ids)
        feats[s] = {
            "previous state": state,
            "+ event texts": np.concatenate([state, mean_text], axis=1),
            "+ texts and numbers": np.concatenate([state, mean_text, extra], axis=1),
        }
    clip_dir, ldm_dir = res / "models/clip", res / "models/ldm"
    if (clip_dir / "clip_config.json").exists():
        clip = ClipModel.load(clip_dir).eval()
        for s in parts:
            enc = encoder_features(clip.tab, reader, parts[s]["pair_id"].tolist())
            feats[s]["+ CLIP event encoder"] = np.concatenate([feats[s]["previous state"], enc], axis=1)
        if (ldm_dir / "adapter" / "model.safetensors").exists():
            tab = ldm_tab(ldm_dir, clip, cfg.sample.use_ema)
            if tab is not None:
                for s in parts:
                    enc = encoder_features(tab, reader, parts[s]["pair_id"].tolist())
                    feats[s]["+ LDM event encoder"] = np.concatenate([feats[s]["previous state"], enc], axis=1)

    change = {s: truth[s].trg - truth[s].prev for s in parts}
    tr, te = parts["train"], parts[args.split]
    n_te = len(te)
    data = comparisons.HeadlineData(
        labels,
        np.zeros((n_te, len(labels))),
        np.zeros((n_te, len(labels))),
        {sub: [] for sub in comparisons.SUBSETS},
        pt,
        {"partial_r": sets["partial_r"], "crossing_auroc": []},
    )
    methods, per = {}, {}
    for name in feats["train"]:
        pred = np.full((n_te, len(labels)), np.nan)
        per[name] = {}
        for f in sets["partial_r"]:
            k = pt.column(f)
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
            model.fit(feats["train"][name][ok["train"]], change["train"][ok["train"], k])
            pred[:, labels.index(f)] = model.predict(feats[args.split][name])
            r = metrics.partial_correlation(pred[:, labels.index(f)], change[args.split][:, k], pt.prev[:, k])
            per[name][f] = r["value"]
        methods[name] = (np.zeros((n_te, len(labels))), pred)
    groups = te["subject_id"].to_numpy()
    values = {n: comparisons.headline_values(data, *methods[n], np.arange(n_te)) for n in methods}
    boot = comparisons.bootstrap(data, methods, groups, ev.bootstrap, ev.seed)
    n_patients = len(np.unique(groups))
    iv = comparisons.intervals(values, boot, ev.bootstrap, n_patients)
    dim = {n: feats["train"][n].shape[1] for n in feats["train"]}

    print(
        f"probes fitted on {int(ok['train'].sum())} train pairs ({tr['subject_id'].nunique()} patients), scored on "
        f"{n_te} {args.split} pairs from {n_patients} patients; {ev.bootstrap} patient-level resamples; "
        f"{time.time() - t0:.0f} s\nlabel set (partial r): {', '.join(sets['partial_r'])}\n"
    )
    print(f"| features | width | partial r macro [95 %] | {' | '.join(sets['partial_r'])} |")
    print("|---|---:|---|" + "---:|" * len(sets["partial_r"]))
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for n in methods:
        e = iv[n]["truth_partial_r_macro"]
        ci = "" if e["ci95"] is None else f" [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"
        cells = " | ".join(fmt(per[n][f]) for f in sets["partial_r"])
        print(f"| {n} | {dim[n]} | {fmt(e['value'])}{ci} | {cells} |")
    pairs = [(n, "previous state") for n in methods if n != "previous state"]
    if "+ LDM event encoder" in methods:
        pairs.append(("+ LDM event encoder", "+ CLIP event encoder"))
    print("\n| paired difference, partial r macro | delta [95 %] | verdict |\n|---|---|---|")
    for a, b in pairs:
        c = next(
            e
            for e in comparisons.compare(a, [b], values, boot, ev.bootstrap, n_patients)[f"{a}_vs_{b}"]
            if e["metric"] == "truth_partial_r_macro"
        )
        ci = "no interval" if c["ci95"] is None else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
        print(f"| {a} − {b} | {fmt(c['delta'])} {ci} | {c['verdict']} |")


if __name__ == "__main__":
    main()
