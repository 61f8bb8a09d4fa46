"""How much the EHR events between two chest images tell about the change between them, in the synthetic world.

For every dynamic finding, over all ordered pairs of frontal studies within one admission (gap < 48 h), the
true change of the hidden severity (from `truth.parquet`) is predicted out of fold (5 folds grouped by
patient, gradient-boosted trees) from (a) the previous image's severities alone, (a+gap) those plus the gap,
and (b) those plus features of the events the paper's filters keep between the two images: the count of each
treatment code, and the mean and last value of each readout (numeric items; share of each value for text
items). The gain b − a is information only the events carry. Also prints events per pair and the share of
treatment events among them. Runs on a world without images.

    python bench/world_information.py --patients 300                              # current defaults
    python bench/world_information.py --patients 300 --set randomized_treatment=0 --set label_noise=0.05
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DYNAMIC = ("pleural_effusion", "edema", "consolidation", "pneumothorax", "atelectasis", "support_devices")
ACTION_TABLES = ("prescriptions", "inputevents", "procedureevents")
NOT_TREATMENTS = {("procedureevents", "225459")}  # a chest X-ray order is imaging, not a treatment
BACKGROUND_DRUGS = {"Heparin", "Metoprolol Tartrate", "Acetaminophen", "Pantoprazole", "Docusate Sodium", "Senna"}


def _read(root: Path, rel: str, **kw) -> pd.DataFrame:
    return pd.read_csv(root / rel, low_memory=False, **kw)


def kept_events(root: Path) -> pd.DataFrame:
    """Every event row the paper's filters keep, as (hadm_id, t, kind, feat, value, treatment)."""
    from ehrxdiff_core.data.event_filters import (
        CHART_CATEGORIES,
        LAB_CATEGORIES,
        LAB_LABELS,
        MICRO_SPEC_TYPES,
        PROCEDURE_CATEGORIES,
        load_prescription_whitelist,
    )

    hosp, icu = "mimiciv/hosp", "mimiciv/icu"
    parts = []

    def add(df: pd.DataFrame, table: str, time_col: str, kind: str, feat: pd.Series, value, treatment) -> None:
        parts.append(
            pd.DataFrame(
                {
                    "hadm_id": df["hadm_id"].to_numpy(),
                    "t": pd.to_datetime(df[time_col]).to_numpy(),
                    "kind": kind,
                    "feat": (table + ":" + feat.astype(str)).to_numpy(),
                    "value": np.asarray(value, dtype=float) if not np.isscalar(value) else value,
                    "treatment": np.asarray(treatment, bool) if not np.isscalar(treatment) else treatment,
                }
            )
        )

    lab = _read(root, f"{hosp}/labevents.csv.gz", usecols=["hadm_id", "itemid", "charttime", "valuenum"])
    dl = _read(root, f"{hosp}/d_labitems.csv.gz")
    keep = dl[dl.category.isin(LAB_CATEGORIES) | dl.label.isin(LAB_LABELS)].set_index("itemid").label
    lab = lab[lab.itemid.isin(keep.index) & lab.hadm_id.notna()]
    add(lab, "lab", "charttime", "num", lab.itemid.map(keep), lab.valuenum, False)

    di = _read(root, f"{icu}/d_items.csv.gz")
    ch = _read(root, f"{icu}/chartevents.csv.gz", usecols=["hadm_id", "itemid", "charttime", "value", "valuenum"])
    ok = di[(di.linksto == "chartevents") & di.category.isin(CHART_CATEGORIES)]
    ch = ch[ch.itemid.isin(ok.itemid)]
    label = ok.set_index("itemid").label
    num = ch[ch.valuenum.notna()]
    add(num, "chart", "charttime", "num", num.itemid.map(label), num.valuenum, False)
    txt = ch[ch.valuenum.isna()]
    add(txt, "chart", "charttime", "txt", txt.itemid.map(label) + "=" + txt.value.astype(str), 1.0, False)

    out = _read(root, f"{icu}/outputevents.csv.gz", usecols=["hadm_id", "itemid", "charttime", "value"])
    add(out, "output", "charttime", "num", out.itemid.map(di.set_index("itemid").label), out.value, False)

    drugs = set(load_prescription_whitelist(None))
    rx = _read(root, f"{hosp}/prescriptions.csv.gz", usecols=["hadm_id", "drug", "starttime"])
    rx = rx[rx.drug.isin(drugs) & ~rx.drug.str.lower().str.contains("tobramycin|coq10")]
    add(rx, "rx", "starttime", "act", rx.drug, 1.0, ~rx.drug.isin(BACKGROUND_DRUGS))

    inp = _read(root, f"{icu}/inputevents.csv.gz", usecols=["hadm_id", "itemid", "starttime"])
    add(inp, "input", "starttime", "act", inp.itemid.map(di.set_index("itemid").label), 1.0, True)

    pr = _read(root, f"{icu}/procedureevents.csv.gz", usecols=["hadm_id", "itemid", "starttime", "ordercategoryname"])
    pr = pr[pr.ordercategoryname.isin(PROCEDURE_CATEGORIES)]
    add(
        pr,
        "proc",
        "starttime",
        "act",
        pr.itemid.map(di.set_index("itemid").label),
        1.0,
        ~pr.itemid.astype(str).isin({c for t, c in NOT_TREATMENTS}),
    )

    mi = _read(
        root, f"{hosp}/microbiologyevents.csv.gz", usecols=["hadm_id", "charttime", "spec_type_desc", "org_name"]
    )
    mi = mi[mi.spec_type_desc.isin(MICRO_SPEC_TYPES)]
    add(mi, "micro", "charttime", "act", mi.spec_type_desc + np.where(mi.org_name.notna(), "+", "-"), 1.0, False)

    ev = pd.concat(parts, ignore_index=True)
    ev = ev[ev.hadm_id.notna()].astype({"hadm_id": np.int64})
    return ev.sort_values(["hadm_id", "t"], kind="stable").reset_index(drop=True)


def image_pairs(root: Path, max_gap_h: float = 48.0) -> pd.DataFrame:
    """All ordered pairs of frontal studies of adults inside one admission with 0 < gap < max_gap_h."""
    from ehrxdiff_core.synthetic.process import FINDINGS

    truth = pd.read_parquet(root / "truth.parquet")
    adults = _read(root, "mimiciv/hosp/patients.csv.gz").query("anchor_age >= 18").subject_id
    truth = truth[truth.view.isin(["AP", "PA"]) & truth.hadm_id.notna() & truth.subject_id.isin(adults)]
    st = truth.drop_duplicates("study_id").astype({"hadm_id": np.int64})
    pairs = st.merge(st, on=["subject_id", "hadm_id"], suffixes=("_p", "_t"))
    gap = (pairs.time_t - pairs.time_p).dt.total_seconds() / 3600
    pairs = pairs.assign(gap_h=gap)[(gap > 0) & (gap < max_gap_h) & (pairs.study_id_p != pairs.study_id_t)]
    keep = ["subject_id", "hadm_id", "time_p", "time_t", "gap_h"]
    keep += [f"{f}_p" for f in FINDINGS] + [f"{f}_t" for f in FINDINGS]
    return pairs[keep].reset_index(drop=True)


def pair_features(pairs: pd.DataFrame, ev: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Event features of each pair's window [prev time, target time] and event-count statistics."""
    hadm = ev.hadm_id.to_numpy()
    t = ev.t.to_numpy()
    starts = np.searchsorted(hadm, pairs.hadm_id.to_numpy(), "left")
    ends = np.searchsorted(hadm, pairs.hadm_id.to_numpy(), "right")
    idx, owner = [], []
    for k, (s, e, t0, t1) in enumerate(zip(starts, ends, pairs.time_p.to_numpy(), pairs.time_t.to_numpy())):
        lo = s + np.searchsorted(t[s:e], t0, "left")
        hi = s + np.searchsorted(t[s:e], t1, "right")
        idx.append(np.arange(lo, hi))
        owner.append(np.full(hi - lo, k))
    idx, owner = np.concatenate(idx), np.concatenate(owner)
    long = ev.iloc[idx].assign(pair=owner)
    n = len(pairs)
    feats = []
    act = long[long.kind == "act"]
    feats.append(act.pivot_table(index="pair", columns="feat", values="value", aggfunc="sum").add_prefix("n:"))
    num = long[long.kind == "num"]
    g = num.groupby(["pair", "feat"]).value
    feats.append(g.mean().unstack().add_prefix("mean:"))
    feats.append(g.last().unstack().add_prefix("last:"))
    txt = long[long.kind == "txt"]
    if len(txt):
        txt = txt.assign(item=txt.feat.str.split("=", n=1).str[0])
        per_value = txt.groupby(["pair", "feat", "item"]).value.sum().reset_index()
        per_item = txt.groupby(["pair", "item"]).value.sum().rename("total").reset_index()
        share = per_value.merge(per_item, on=["pair", "item"])
        feats.append(
            share.assign(s=share.value / share.total)
            .pivot(index="pair", columns="feat", values="s")
            .fillna(0.0)
            .add_prefix("share:")
        )
    X = pd.concat(feats, axis=1).reindex(range(n))
    for c in X.columns:
        if c.startswith("n:"):
            X[c] = X[c].fillna(0.0)
    per_pair = np.bincount(owner, minlength=n)
    stats = dict(
        pairs=n,
        events_per_pair_mean=float(per_pair.mean()),
        events_per_pair_median=float(np.median(per_pair)),
        treatment_share=float(long.treatment.mean()) if len(long) else 0.0,
        pairs_with_treatment=float(np.bincount(owner, long.treatment.to_numpy(float), n).astype(bool).mean()),
        per_table=(long.feat.str.split(":", n=1).str[0].value_counts() / n).round(1).to_dict(),
    )
    return X, stats


def oof_r2(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Out-of-fold R² of gradient-boosted trees (5 folds grouped by patient)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import GroupKFold
    from threadpoolctl import threadpool_limits

    pred = np.zeros_like(y)
    with threadpool_limits(1):  # small fits: OpenMP threads only contend on a shared machine
        for tr, te in GroupKFold(5).split(X, y, groups):
            m = HistGradientBoostingRegressor(
                max_iter=300, learning_rate=0.05, min_samples_leaf=15, l2_regularization=1.0, random_state=seed
            )
            m.fit(X[tr], y[tr])
            pred[te] = m.predict(X[te])
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def measure(root: Path) -> tuple[pd.DataFrame, dict]:
    from ehrxdiff_core.synthetic.process import FINDINGS

    pairs = image_pairs(root)
    X_ev, stats = pair_features(pairs, kept_events(root))
    prev = pairs[[f"{f}_p" for f in FINDINGS]].to_numpy()
    gap = pairs[["gap_h"]].to_numpy()
    groups = pairs.subject_id.to_numpy()
    rows = []
    for f in DYNAMIC:
        y = (pairs[f"{f}_t"] - pairs[f"{f}_p"]).to_numpy()
        a = oof_r2(prev, y, groups)
        a_gap = oof_r2(np.hstack([prev, gap]), y, groups)
        b = oof_r2(np.hstack([prev, gap, X_ev.to_numpy()]), y, groups)
        rows.append(
            dict(
                finding=f,
                sd_change=float(y.std()),
                r2_prev=a,
                r2_prev_gap=a_gap,
                r2_with_events=b,
                gain=b - a,
                gain_over_gap=b - a_gap,
            )
        )
    stats["event_features"] = X_ev.shape[1]
    return pd.DataFrame(rows), stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chartevent-rate", type=float, default=1.0, help="the demo's (config.yaml) is 1.0")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other synthetic setting (JSON value; dotted for nested, e.g. effects.diuretic_edema=0.05)",
    )
    ap.add_argument("--world", type=Path, help="measure an existing world instead of generating one")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()

    from ehrxdiff_core.config import SyntheticConfig
    from ehrxdiff_core.synthetic import write_world

    raw: dict = dict(
        patients=args.patients,
        seed=args.seed,
        chartevent_rate_per_hour=args.chartevent_rate,
        write_images=False,
        gzip_level=1,
    )
    for kv in args.set:
        key, _, val = kv.partition("=")
        try:
            value = json.loads(val)
        except json.JSONDecodeError:
            value = val
        node = raw
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    with tempfile.TemporaryDirectory(prefix="world_information_") as tmp:
        root = args.world
        t0 = time.perf_counter()
        if root is None:
            root = Path(tmp)
            cfg = SyntheticConfig.model_validate(raw)
            write_world(root, cfg)
        t_gen = time.perf_counter() - t0
        table, stats = measure(root)
    print(f"world: {args.world or raw}  (generated in {t_gen:.0f} s)")
    print(
        f"pairs {stats['pairs']}, kept events per pair mean {stats['events_per_pair_mean']:.0f} "
        f"(median {stats['events_per_pair_median']:.0f}), treatment events {100 * stats['treatment_share']:.1f} %, "
        f"pairs with >= 1 treatment event {100 * stats['pairs_with_treatment']:.0f} %, "
        f"event features {stats['event_features']}"
    )
    print("kept events per pair by table: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["per_table"].items()))
    if args.markdown:
        print(
            "| finding | sd of change | R² prev | R² prev+gap | R² prev+gap+events | gain (b − a) "
            "| gain over prev+gap |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in table.itertuples():
            print(
                f"| {r.finding} | {r.sd_change:.3f} | {r.r2_prev:.2f} | {r.r2_prev_gap:.2f} | {r.r2_with_events:.2f} "
                f"| {r.gain:+.2f} | {r.gain_over_gap:+.2f} |"
            )
    else:
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
