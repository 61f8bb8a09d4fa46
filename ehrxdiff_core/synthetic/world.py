"""Orchestration: one patient at a time, from demographics to admissions, events, images and labels.

Each patient draws from its own generator `default_rng([seed, index])`, so patient i is the same
whatever the number of patients; running row ids (labevent_id, orderid, ...) are assigned in patient
order. Rows stream into the CSV writers, so memory does not grow with the number of patients.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from ..config import SyntheticConfig
from . import vocab as V
from .labels import study_labels
from .process import (
    CO,
    ED,
    EF,
    FINDINGS,
    PX,
    Course,
    initial_state,
    lab_values,
    lung_sounds,
    simulate_course,
    vital_values,
)
from .render import Anatomy, render_chest
from .writer import CsvGzTable

HOUR = 3600
_EPOCH_YEAR = np.datetime64("1970-01-01", "s")
CHART_ITEMS = (("hr", 1.0), ("rr", 1.0), ("spo2", 1.0), ("nbps", 0.5), ("temp", 0.25), ("fio2", 1.0), ("cvp", 0.25))
LUNG_SOUNDS = (("lll_sounds", "base"), ("rul_sounds", "apex"))  # charted at each 4-hourly nursing assessment
LAB_PROB = {"crp": 0.5, "bnp": 0.3}  # chemistry items not drawn with every panel
_CHART_ITEMIDS = np.array(sorted(V.D_ITEMS[k][0] for k, _ in CHART_ITEMS))
_CHART_ITEMID_TEXT = pa.array([str(i) for i in _CHART_ITEMIDS])
_CHART_UOMS = pa.array(
    [next(v[5] for v in V.D_ITEMS.values() if v[0] == i) or None for i in _CHART_ITEMIDS], pa.string()
)
TRUTH_SCHEMA = pa.schema(
    [
        ("dicom_id", pa.string()),
        ("subject_id", pa.int64()),
        ("hadm_id", pa.int64()),
        ("study_id", pa.int64()),
        ("time", pa.timestamp("ms")),
        ("view", pa.string()),
    ]
    + [(f, pa.float64()) for f in FINDINGS]
)


def _year_start(year: int) -> int:
    return int((np.datetime64(f"{year:04d}-01-01", "s") - _EPOCH_YEAR).astype(np.int64))


def _minute(t: float) -> int:
    return int(t // 60 * 60)


@dataclass
class Counters:
    """Running row ids, assigned in patient order (deterministic, independent of chunking)."""

    labevent: int = 1
    specimen: int = 1_000_000
    pharmacy: int = 1_000_000
    order: int = 100_000
    microevent: int = 1
    micro_specimen: int = 1_000_000

    def take(self, name: str, n: int = 1) -> np.ndarray:
        start = getattr(self, name)
        setattr(self, name, start + n)
        return np.arange(start, start + n, dtype=np.int64)


class _Sinks:
    """All output files of one world, opened together and closed together."""

    def __init__(self, root: Path, cfg: SyntheticConfig):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip")
        self.t = {
            name: CsvGzTable(name, root / rel, cfg.gzip_level, pool=self.pool) for name, rel in V.FILE_PATHS.items()
        }
        self.root = root
        self.cxr_root = root / "mimic-cxr-jpg"
        self.truth_path = root / "truth.parquet"
        self._truth = pq.ParquetWriter(self.truth_path, TRUTH_SCHEMA)
        self._truth_rows: list[dict] = []
        self.cxr_root.mkdir(parents=True, exist_ok=True)
        self.image_names = open(self.cxr_root / "IMAGE_FILENAMES", "w")  # streamed: one relative path a line
        self.n_images = 0

    def truth(self, row: dict) -> None:
        self._truth_rows.append(row)
        if len(self._truth_rows) >= 10_000:
            self._flush_truth()

    def _flush_truth(self) -> None:
        if self._truth_rows:
            self._truth.write_table(pa.Table.from_pylist(self._truth_rows, schema=TRUTH_SCHEMA))
            self._truth_rows = []

    def abort(self) -> None:
        """Release every file without flushing buffered rows."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for w in self.t.values():
            w.abort()
        for f in (self._truth, self.image_names):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - already failing; the partial output is discarded
                pass

    def close(self) -> dict[str, int]:
        try:
            for w in self.t.values():
                w.close()
        finally:
            self.pool.shutdown(wait=True)
        self._flush_truth()
        self._truth.close()
        self.image_names.close()
        return {V.FILE_PATHS[k]: w.rows for k, w in self.t.items()}


def _check(cfg: SyntheticConfig) -> None:
    """Id ranges of MIMIC (1xxxxxxx subjects, 2xxxxxxx hadm, 3xxxxxxx stays, 5xxxxxxx studies) must hold."""
    lo, hi = cfg.admissions_per_patient
    slo, shi = cfg.studies_per_admission
    if not 1 <= lo <= hi:
        raise ValueError(f"synthetic.admissions_per_patient must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
    if not 1 <= slo <= shi:
        raise ValueError(f"synthetic.studies_per_admission must be (lo, hi) with 1 <= lo <= hi, got {(slo, shi)}")
    if cfg.patients * (hi + 1) * 5 >= 10_000_000 or cfg.patients * _studies_per_patient(cfg) >= 10_000_000:
        raise ValueError(
            f"synthetic.patients={cfg.patients} with admissions_per_patient={cfg.admissions_per_patient} and "
            f"studies_per_admission={cfg.studies_per_admission} overflows MIMIC's 8-digit id ranges; "
            "lower synthetic.patients or raise synthetic.chartevent_rate_per_hour for more rows"
        )


def _studies_per_patient(cfg: SyntheticConfig) -> int:
    return cfg.admissions_per_patient[1] * cfg.studies_per_admission[1] + 2


def write_world(out_dir: Path, cfg: SyntheticConfig) -> dict[str, int]:
    """Write the whole synthetic MIMIC world into `out_dir`; return the row count of every file."""
    _check(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sinks = _Sinks(out_dir, cfg)
    try:
        items = V.d_items_rows()
        sinks.t["d_items"].add(len(items), **{c: [r[k] for r in items] for k, c in enumerate(V.COLUMNS["d_items"])})
        labs = V.d_labitems_rows()
        sinks.t["d_labitems"].add(len(labs), **{c: [r[k] for r in labs] for k, c in enumerate(V.COLUMNS["d_labitems"])})
        ids = Counters()
        quiet = True if cfg.patients < 500 else None  # None: a bar on a terminal only, not in job logs
        for i in tqdm(range(cfg.patients), desc="synthetic patients", unit="pt", disable=quiet):
            _Patient(i, cfg, sinks, ids).write()
    except BaseException:
        sinks.abort()  # the caller (atomic_dir) discards the partial world
        raise
    counts = sinks.close()
    counts["mimic-cxr-jpg/files/*.jpg"] = sinks.n_images if cfg.write_images else 0
    counts["truth.parquet"] = pq.ParquetFile(sinks.truth_path).metadata.num_rows
    return counts


class _Patient:
    """Everything one subject contributes to every table."""

    def __init__(self, i: int, cfg: SyntheticConfig, sinks: _Sinks, ids: Counters):
        self.i, self.cfg, self.s, self.ids = i, cfg, sinks, ids
        self.rng = rng = np.random.default_rng([cfg.seed, i])
        self.subject_id = 10_000_000 + 4 * i + int(rng.integers(0, 4))
        self.gender = "F" if rng.random() < 0.5 else "M"
        self.anchor_year = int(rng.integers(2110, 2186))
        self.minor = rng.random() < 0.05
        age = int(rng.integers(15, 18)) if self.minor else int(np.clip(rng.normal(64, 16), 18, 100))
        self.anchor_age = 91 if age > 89 else age
        self.year_group = V.YEAR_GROUPS[int(rng.integers(0, len(V.YEAR_GROUPS)))]
        self.race = V.RACES[int(rng.choice(len(V.RACES), p=V.RACE_P))]
        self.insurance = V.INSURANCE[int(rng.integers(0, len(V.INSURANCE)))]
        self.language = V.LANGUAGE[int(rng.random() < 0.1)]
        self.marital = V.MARITAL[int(rng.integers(0, len(V.MARITAL)))]
        self.weight = float(np.round(rng.normal(80, 15), 1))
        self.cardiomegaly = float(np.clip(0.1 + 0.7 * rng.random() ** 1.5 + 0.004 * (age - 60), 0, 1))
        self.anatomy = Anatomy.draw(rng, female=self.gender == "F", age=age)
        self.rare = rng.random(3) < (0.03, 0.04, 0.03)  # fracture, lung lesion, pleural other
        self.split = "train" if (u := rng.random()) < 0.9 else ("validate" if u < 0.95 else "test")
        self.caregivers = rng.integers(1000, 99999, size=6)
        self.n_study = 0
        self.poe_seq = 0

    # ------------------------------------------------------------------ patient
    def write(self) -> None:
        rng, cfg = self.rng, self.cfg
        lo, hi = cfg.admissions_per_patient
        n_adm = int(rng.integers(lo, hi + 1))
        t = _year_start(self.anchor_year) + int(rng.uniform(0, 200 if self.minor else 330) * 86400)
        died = False
        first_admit = t
        for j in range(n_adm):
            t, died = self._admission(j, t)
            if died:
                break
            t += int(rng.uniform(20, 200) * 86400)
        if rng.random() < 0.3:  # ED-only visit with an outpatient CXR: outside any hospital admission
            self._ed_only_visit(first_admit - int(rng.uniform(10, 60) * 86400), slot=hi)
        dod = None
        if died:  # date of death = day of the in-hospital death
            dod = pa.array([int(self.death_time // 86400)], pa.int32()).cast(pa.date32())
        self.s.t["patients"].add(
            1,
            subject_id=self.subject_id,
            gender=self.gender,
            anchor_age=self.anchor_age,
            anchor_year=self.anchor_year,
            anchor_year_group=self.year_group,
            dod=dod,
        )

    def _provider(self) -> str:
        chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "P" + "".join(chars[k] for k in self.rng.integers(0, len(chars), 5))

    # ------------------------------------------------------------------ admission
    def _admission(self, j: int, admit: int) -> tuple[int, bool]:
        rng, cfg, s = self.rng, self.cfg, self.s
        hadm_id = 20_000_000 + self.i * cfg.admissions_per_patient[1] + j
        slot = self.i * (cfg.admissions_per_patient[1] + 1) + j
        initial, infected = initial_state(rng, self.cardiomegaly)

        slo, shi = cfg.studies_per_admission
        k = int(rng.integers(slo, shi + 1))
        has_ed = rng.random() < 0.8
        first = -rng.uniform(0.3, 2.5) if has_ed and rng.random() < 0.15 else rng.uniform(0.5, 8)
        gaps = np.where(rng.random(k - 1) < 0.85, rng.uniform(4, 40, k - 1), rng.uniform(48, 80, k - 1))
        study_h = first + np.concatenate([[0.0], np.cumsum(gaps)])
        los_h = max(float(study_h[-1]) + rng.uniform(4, 60), 24.0)
        hours = int(math.ceil(los_h))
        admit = _minute(admit)
        disch = admit + int(los_h * HOUR)
        icu = None
        if rng.random() < 0.8 or initial[PX] > 0.3:
            icu_in = rng.uniform(0.2, 4.0)
            icu = (icu_in, max(icu_in + 12.0, los_h - rng.uniform(2, 24)))
        course = simulate_course(
            rng, hours, icu, initial, infected, cfg.effect_strength, cfg.effects, cfg.randomized_treatment
        )
        died = rng.random() < 0.02
        edreg = admit - int(rng.uniform(2, 8) * HOUR) if has_ed else None
        if died:
            self.death_time = disch
        s.t["admissions"].add(
            1,
            subject_id=self.subject_id,
            hadm_id=hadm_id,
            admittime=[admit],
            dischtime=[disch],
            deathtime=[disch] if died else None,
            admission_type=V.ADMISSION_TYPES[0] if has_ed else V.ADMISSION_TYPES[int(rng.integers(1, 5))],
            admit_provider_id=self._provider(),
            admission_location=V.ADMISSION_LOCATIONS[0] if has_ed else V.ADMISSION_LOCATIONS[int(rng.integers(1, 4))],
            discharge_location="DIED" if died else V.DISCHARGE_LOCATIONS[int(rng.integers(0, 4))],
            insurance=self.insurance,
            language=self.language,
            marital_status=self.marital or None,
            race=self.race,
            edregtime=[edreg] if has_ed else None,
            edouttime=[admit] if has_ed else None,
            hospital_expire_flag=int(died),
        )

        stay_id = None
        unit = V.ICU_UNITS[int(rng.integers(0, len(V.ICU_UNITS)))]
        ward = V.WARDS[int(rng.integers(0, len(V.WARDS)))]
        tid = 30_000_000 + slot * 5
        rows: list[tuple] = []
        if has_ed:
            rows.append((tid, "ED", V.ED_UNIT, edreg, admit))
        if icu is not None:
            icu_in, icu_out = admit + int(icu[0] * HOUR), min(disch, admit + int(icu[1] * HOUR))
            stay_id = tid + 2
            rows.append((tid + 1, "admit", ward, admit, icu_in))
            rows.append((stay_id, "transfer", unit, icu_in, icu_out))
            if icu_out < disch:
                rows.append((tid + 3, "transfer", ward, icu_out, disch))
            s.t["icustays"].add(
                1,
                subject_id=self.subject_id,
                hadm_id=hadm_id,
                stay_id=stay_id,
                first_careunit=unit,
                last_careunit=unit,
                intime=[icu_in],
                outtime=[icu_out],
                los=round((icu_out - icu_in) / 86400, 6),
            )
        else:
            rows.append((tid + 1, "admit", ward, admit, disch))
        rows.append((tid + 4, "discharge", None, disch, None))
        s.t["transfers"].add(
            len(rows),
            subject_id=self.subject_id,
            hadm_id=hadm_id,
            transfer_id=[r[0] for r in rows],
            eventtype=[r[1] for r in rows],
            careunit=[r[2] for r in rows],
            intime=[r[3] for r in rows],
            outtime=[r[4] for r in rows],
        )

        ctx = _AdmissionCtx(hadm_id, stay_id, admit, disch, hours, icu, course)
        self._prescriptions(ctx)
        if icu is not None:
            self._icu_events(ctx)
        self._labs(ctx)
        self._micro(ctx)
        for h in study_h:
            st = course.state[int(np.clip(h, 0, hours))]
            in_icu = icu is not None and icu[0] <= h < icu[1]
            self._study(
                admit + h * HOUR,
                st,
                course.infected,
                hadm_id if 0 < h * HOUR <= disch - admit else None,
                portable=in_icu,
            )
            if in_icu:
                self._procedure(ctx, "pr_cxr", admit + h * HOUR, admit + h * HOUR, value=1.0)
        return disch, died

    # ------------------------------------------------------------------ hosp/prescriptions
    def _prescriptions(self, c: _AdmissionCtx) -> None:
        rng = self.rng
        orders: list[tuple[str, float, float | None, str | None]] = []  # drug key, start h, stop h, dose
        for key in rng.choice(V.BACKGROUND_DRUGS, size=int(rng.integers(2, 5)), replace=False):
            orders.append((str(key), rng.uniform(0.5, 6), c.hours, None))
        doses = [t for t in c.course.treatments if t.kind == "antibiotic_dose"]
        for tr in c.course.treatments:
            if tr.kind == "furosemide":
                orders.append(("furosemide", tr.hour, tr.hour + 1, str(tr.detail)))
            elif tr.kind == "fluids":
                orders.append(("nacl", tr.hour, tr.hour + 1, str(tr.detail)))
            elif tr.kind == "antibiotic_start":
                last = max((d.hour for d in doses if d.hour >= tr.hour), default=tr.hour)
                drug = V.ANTIBIOTIC_COURSES[tr.detail][0]
                orders.append((drug, tr.hour, min(c.hours, last + 12), None))
                if drug == "ceftriaxone" and rng.random() < 0.5:
                    orders.append(("azithromycin", tr.hour + 0.5, min(c.hours, tr.hour + 72), None))
            elif tr.kind == "tobramycin":
                orders.append(("tobramycin", tr.hour, min(c.hours, tr.hour + 48), None))
            elif tr.kind == "intubation":
                orders.append(("duoneb", tr.hour + 1, min(c.hours, tr.hour + 48), None))
        if not orders:
            return
        n = len(orders)
        d = [V.DRUGS[o[0]] for o in orders]
        seq0 = self.poe_seq
        self.poe_seq += n
        self.s.t["prescriptions"].add(
            n,
            subject_id=self.subject_id,
            hadm_id=c.hadm_id,
            pharmacy_id=self.ids.take("pharmacy", n),
            poe_id=[f"{self.subject_id}-{seq0 + k + 1}" for k in range(n)],
            poe_seq=np.arange(seq0 + 1, seq0 + n + 1),
            order_provider_id=[self._provider() for _ in range(n)],
            starttime=[_minute(c.admit + o[1] * HOUR) for o in orders],
            stoptime=[None if o[2] is None else _minute(c.admit + o[2] * HOUR) for o in orders],
            drug_type=[x[7] for x in d],
            drug=[x[0] for x in d],
            formulary_drug_cd=[x[1] for x in d],
            gsn=[f"{g:06d}" for g in rng.integers(1000, 99999, n)],
            ndc=[f"{g:011d}" for g in rng.integers(10**9, 10**10, n)],
            prod_strength=[x[2] for x in d],
            form_rx=None,
            dose_val_rx=[o[3] or x[4] for o, x in zip(orders, d)],
            dose_unit_rx=[x[5] for x in d],
            form_val_disp=[o[3] or x[4] for o, x in zip(orders, d)],
            form_unit_disp=[x[5] for x in d],
            doses_per_24_hrs=[1.0 if o[2] is not None and o[2] - o[1] <= 1 else 2.0 for o in orders],
            route=[x[6] for x in d],
        )

    # ------------------------------------------------------------------ icu/*
    def _procedure(
        self,
        c: _AdmissionCtx,
        key: str,
        start: float,
        end: float,
        value: float | None,
        uom: str | None = None,
        location: str | None = None,
        loccat: str | None = None,
    ) -> None:
        cat, desc = V.PROCEDURE_ORDER_CATEGORY[key]
        oid = int(self.ids.take("order")[0])
        self.s.t["procedureevents"].add(
            1,
            subject_id=self.subject_id,
            hadm_id=c.hadm_id,
            stay_id=c.stay_id,
            caregiver_id=int(self.rng.choice(self.caregivers)),
            starttime=[_minute(start)],
            endtime=[_minute(end)],
            storetime=[_minute(end + self.rng.uniform(0, 3600))],
            itemid=V.D_ITEMS[key][0],
            value=value,
            valueuom=uom,
            location=location,
            locationcategory=loccat,
            orderid=oid,
            linkorderid=oid,
            ordercategoryname=cat,
            ordercategorydescription=desc,
            patientweight=self.weight,
            isopenbag=0,
            continueinnextdept=0,
            statusdescription="FinishedRunning",
            originalamount=value,
            originalrate=1.0,
        )

    def _input(
        self,
        c: _AdmissionCtx,
        key: str,
        start: float,
        end: float,
        amount: float,
        rate: float | None,
        rateuom: str | None,
    ) -> None:
        cat, cat2, comp, desc, uom = V.INPUT_ORDER[key]
        oid = int(self.ids.take("order")[0])
        self.s.t["inputevents"].add(
            1,
            subject_id=self.subject_id,
            hadm_id=c.hadm_id,
            stay_id=c.stay_id,
            caregiver_id=int(self.rng.choice(self.caregivers)),
            starttime=[_minute(start)],
            endtime=[_minute(end)],
            storetime=[_minute(start + self.rng.uniform(0, 1800))],
            itemid=V.D_ITEMS[key][0],
            amount=amount,
            amountuom=uom,
            rate=rate,
            rateuom=rateuom,
            orderid=oid,
            linkorderid=oid,
            ordercategoryname=cat,
            secondaryordercategoryname=cat2 or None,
            ordercomponenttypedescription=comp,
            ordercategorydescription=desc,
            patientweight=self.weight,
            totalamount=amount,
            totalamountuom=uom,
            isopenbag=0,
            continueinnextdept=0,
            statusdescription="FinishedRunning",
            originalamount=amount,
            originalrate=rate if rate is not None else amount,
        )

    def _icu_events(self, c: _AdmissionCtx) -> None:
        rng, cfg, co = self.rng, self.cfg, c.course
        i0, i1 = c.icu
        at = lambda h: c.admit + h * HOUR  # noqa: E731
        in_icu = lambda h: i0 <= h < i1  # noqa: E731
        self._procedure(
            c,
            "pr_peripheral",
            at(i0),
            at(i1),
            value=round((i1 - i0) * 60),
            uom="min",
            location="Left Antecubital",
            loccat="Peripheral",
        )
        intub_start = None
        for tr in co.treatments:
            h = tr.hour
            if not in_icu(h):
                continue
            if tr.kind == "furosemide":
                self._input(c, "in_furosemide", at(h), at(h) + 60, float(tr.detail), None, None)
            elif tr.kind == "fluids":
                self._input(c, "in_nacl", at(h), at(h + 1), float(tr.detail), float(tr.detail), "mL/hour")
            elif tr.kind == "antibiotic_dose":
                self._input(c, V.ANTIBIOTIC_COURSES[tr.detail][1], at(h), at(h + 0.5), 1.0, None, None)
            elif tr.kind == "central_line":
                self._procedure(
                    c,
                    "pr_multilumen",
                    at(h),
                    at(i1),
                    value=round((i1 - h) * 60),
                    uom="min",
                    location="Right IJ",
                    loccat="Invasive Venous",
                )
            elif tr.kind == "chest_tube":
                self._procedure(c, "pr_chesttube", at(h), at(h), value=1.0)
            elif tr.kind == "intubation":
                self._procedure(c, "pr_intubation", at(h), at(h), value=1.0)
                intub_start = h
            elif tr.kind == "extubation" and intub_start is not None:
                self._procedure(c, "pr_extubation", at(h), at(h), value=1.0)
                self._ventilation(c, intub_start, h)
                intub_start = None
        if intub_start is not None:
            self._ventilation(c, intub_start, i1)

        # outputevents: hourly-ish Foley urine (up after diuretics), 4-hourly chest tube drainage
        t = np.arange(i0 + rng.uniform(0, 1), i1, 1.0)
        t = t + rng.uniform(-0.2, 0.2, len(t))
        t = t[(t >= i0) & (t < i1)]
        idx = np.clip(t.astype(int), 0, c.hours)
        urine = 45 + 160 * co.diuretic[idx] - 20 * co.state[idx, ED] + 15 * rng.standard_normal(len(t))
        urine = np.round(np.clip(urine, 5, None))
        self._outputs(c, "out_foley", t, urine)
        tube_h = np.arange(math.ceil(i0), i1, 4.0)
        tube_h = tube_h[co.chest_tube[np.clip(tube_h.astype(int), 0, c.hours)]]
        idx = np.clip(tube_h.astype(int), 0, c.hours)
        drain = np.round(np.clip(20 + 250 * co.state[idx, EF] + 15 * rng.standard_normal(len(tube_h)), 0, None))
        self._outputs(c, "out_chesttube", tube_h, drain)

        # chartevents: vitals as noisy functions of the hourly state
        dur = i1 - i0
        rate = cfg.chartevent_rate_per_hour
        times, items, vals = [], [], []
        for key, mult in CHART_ITEMS:
            n = int(rng.poisson(rate * mult * dur))
            th = np.sort(i0 + rng.random(n) * dur)
            idx = np.minimum(th.astype(np.int64), c.hours)
            if key in ("fio2", "cvp"):  # set on the ventilator / read from a central line
                keep = (co.intubated if key == "fio2" else co.central_line)[idx]
                th, idx = th[keep], idx[keep]
            times.append(th)
            items.append(np.full(len(th), V.D_ITEMS[key][0], np.int64))
            vals.append(vital_values(key, co.state[idx], co.intubated[idx], co.on_abx[idx], rng))
        th = np.concatenate(times)
        order = np.argsort(th, kind="stable")
        th, itemids, valuenum = th[order], np.concatenate(items)[order], np.concatenate(vals)[order]
        uom_idx = np.searchsorted(_CHART_ITEMIDS, itemids)
        chart_s = (c.admit + th * HOUR) // 60 * 60
        chart_s = chart_s.astype(np.int64)
        n = len(th)
        store_s = chart_s + (rng.integers(-2, 40, n) * 60)
        vn = pa.array(valuenum)
        self.s.t["chartevents"].add(
            n,
            subject_id=self.subject_id,
            hadm_id=c.hadm_id,
            stay_id=c.stay_id,
            caregiver_id=pc.take(
                pa.array([str(x) for x in self.caregivers]), pa.array(rng.integers(0, len(self.caregivers), n))
            ),
            charttime=chart_s,
            storetime=store_s,
            itemid=pc.take(_CHART_ITEMID_TEXT, pa.array(uom_idx)),
            value=pc.cast(vn, pa.string()),
            valuenum=vn,
            valueuom=pc.take(_CHART_UOMS, pa.array(uom_idx)),
            warning=0,
        )
        # text items from categories the paper drops (ADT, Neurological)
        t0 = _minute(c.admit + i0 * HOUR)
        gcs_h = np.arange(i0, i1, 4.0)
        gcs_txt = np.where(co.intubated[np.minimum(gcs_h.astype(int), c.hours)], "To Pain", "Spontaneously")
        gcs_num = np.where(gcs_txt == "To Pain", 2.0, 4.0)
        self.s.t["chartevents"].add(
            1 + len(gcs_h),
            subject_id=self.subject_id,
            hadm_id=c.hadm_id,
            stay_id=c.stay_id,
            caregiver_id=int(self.caregivers[0]),
            charttime=np.array([t0] + [_minute(c.admit + h * HOUR) for h in gcs_h], np.int64),
            storetime=np.array([t0 + 120] + [_minute(c.admit + h * HOUR) + 300 for h in gcs_h], np.int64),
            itemid=np.array([V.D_ITEMS["gender"][0]] + [V.D_ITEMS["gcs_eye"][0]] * len(gcs_h), np.int64),
            value=[self.gender] + gcs_txt.tolist(),
            valuenum=[None] + gcs_num.tolist(),
            valueuom=None,
            warning=0,
        )
        # auscultation at each nursing assessment (kept category Respiratory): text values, no valuenum
        exam_h = np.arange(i0 + rng.uniform(0, 1), i1, 4.0)
        st = co.state[np.minimum(exam_h.astype(int), c.hours)]
        exam_s = np.array([_minute(c.admit + h * HOUR) for h in exam_h], np.int64)
        for key, zone in LUNG_SOUNDS:
            self.s.t["chartevents"].add(
                len(exam_h),
                subject_id=self.subject_id,
                hadm_id=c.hadm_id,
                stay_id=c.stay_id,
                caregiver_id=int(self.caregivers[1]),
                charttime=exam_s,
                storetime=exam_s + 600,
                itemid=V.D_ITEMS[key][0],
                value=lung_sounds(zone, st, rng).tolist(),
                valuenum=None,
                valueuom=None,
                warning=0,
            )

    def _ventilation(self, c: _AdmissionCtx, start_h: float, end_h: float) -> None:
        self._procedure(
            c,
            "pr_ventilation",
            c.admit + start_h * HOUR,
            c.admit + end_h * HOUR,
            value=round((end_h - start_h) * 60),
            uom="min",
        )
        self._input(
            c,
            "in_propofol",
            c.admit + start_h * HOUR,
            c.admit + end_h * HOUR,
            round(20.0 * (end_h - start_h), 1),
            20.0,
            "mg/hour",
        )

    def _outputs(self, c: _AdmissionCtx, key: str, hours: np.ndarray, values: np.ndarray) -> None:
        n = len(hours)
        chart_s = ((c.admit + hours * HOUR) // 60 * 60).astype(np.int64)
        self.s.t["outputevents"].add(
            n,
            subject_id=self.subject_id,
            hadm_id=c.hadm_id,
            stay_id=c.stay_id,
            caregiver_id=self.caregivers[self.rng.integers(0, len(self.caregivers), n)],
            charttime=chart_s,
            storetime=chart_s + self.rng.integers(0, 90, n) * 60,
            itemid=V.D_ITEMS[key][0],
            value=values,
            valueuom="mL",
        )

    # ------------------------------------------------------------------ hosp/labevents
    def _labs(self, c: _AdmissionCtx) -> None:
        rng, cfg, co = self.rng, self.cfg, c.course
        n_draw = int(rng.poisson(cfg.lab_rate_per_hour * c.hours)) + 1
        draw_h = np.sort(rng.random(n_draw) * c.hours)
        in_icu = np.zeros(n_draw, bool) if c.icu is None else (draw_h >= c.icu[0]) & (draw_h < c.icu[1])
        abg = rng.random(n_draw) < np.where(in_icu, 0.5, 0.15)
        no_hadm = rng.random(n_draw) < 0.06  # ED / outpatient-coded labs: NULL hadm_id though inside the stay
        # outpatient labs before the admission (NULL hadm_id, outside every window)
        n_pre = int(rng.integers(0, 3))
        pre_h = -rng.uniform(24, 24 * 30, n_pre)
        draw_h = np.concatenate([pre_h, draw_h])
        abg = np.concatenate([np.zeros(n_pre, bool), abg])
        in_icu = np.concatenate([np.zeros(n_pre, bool), in_icu])
        no_hadm = np.concatenate([np.ones(n_pre, bool), no_hadm])
        specimen = self.ids.take("specimen", len(draw_h))
        idx = np.clip(draw_h, 0, c.hours).astype(np.int64)
        st = co.state[idx].copy()
        st[draw_h < 0] = np.array([0.05, 0.05, 0.02, self.cardiomegaly, 0.05, 0.0, 0.02])
        parts = []
        for key in V.ABG_PANEL + V.CHEM_PANEL:
            want = abg if key in V.ABG_PANEL else ~abg & (rng.random(len(draw_h)) < LAB_PROB.get(key, 1.0))
            sel = np.flatnonzero(want)
            if len(sel) == 0:
                continue
            vals = lab_values(key, st[sel], co.intubated[idx[sel]], co.diuretic[idx[sel]], rng)
            parts.append((key, sel, vals))
        if not parts:
            return
        sel = np.concatenate([p[1] for p in parts])
        keys = [p[0] for p in parts for _ in p[1]]
        vals = np.concatenate([p[2] for p in parts])
        order = np.lexsort((np.arange(len(sel)), sel))
        sel, vals = sel[order], vals[order]
        keys = [keys[k] for k in order]
        info = [V.LAB_ITEMS[k] for k in keys]
        lo = np.array([x[5] for x in info])
        hi = np.array([x[6] for x in info])
        n = len(sel)
        chart_s = ((c.admit + draw_h[sel] * HOUR) // 60 * 60).astype(np.int64)
        vn = pa.array(vals)
        abnormal = (vals < lo) | (vals > hi)
        self.s.t["labevents"].add(
            n,
            labevent_id=self.ids.take("labevent", n),
            subject_id=self.subject_id,
            hadm_id=pa.array(np.full(n, c.hadm_id), mask=no_hadm[sel]),
            specimen_id=specimen[sel],
            itemid=np.array([x[0] for x in info], np.int64),
            order_provider_id=None,
            charttime=chart_s,
            storetime=chart_s + rng.integers(20, 150, n) * 60,
            value=pc.cast(vn, pa.string()),
            valuenum=vn,
            valueuom=[x[4] for x in info],
            ref_range_lower=lo,
            ref_range_upper=hi,
            flag=pa.array(np.where(abnormal, "abnormal", ""), mask=~abnormal),
            priority=pa.array(np.where(in_icu[sel], "STAT", "ROUTINE")),
            comments=None,
        )

    # ------------------------------------------------------------------ hosp/microbiologyevents
    def _micro(self, c: _AdmissionCtx) -> None:
        rng, co = self.rng, c.course
        orders: list[tuple[str, float, bool]] = []
        if rng.random() < 0.35:
            orders.append(("blood", rng.uniform(0.2, 3), co.infected and rng.random() < 0.2))
        if rng.random() < 0.15:
            orders.append(("urine", rng.uniform(0.2, 6), rng.random() < 0.2))
        for h in range(2, c.hours, 12):
            cons, eff = co.state[h, CO], co.state[h, EF]
            u = rng.random(3)
            if cons > 0.3 and u[0] < 0.4:
                spec = "bal" if co.intubated[h] and u[1] < 0.3 else "sputum"
                orders.append((spec, h + u[2] * 6, co.infected and u[1] < 0.75))
            elif eff > 0.6 and u[0] < 0.15:
                orders.append(("pleural", h + u[2] * 6, False))
        for spec, h, positive in orders:
            spec_itemid, spec_desc, test_itemid, test_name = V.SPECIMENS[spec]
            t = _minute(c.admit + h * HOUR)
            day = t // 86400 * 86400
            store = t + int(rng.uniform(30, 60) * HOUR)
            sid = int(self.ids.take("micro_specimen")[0])
            common = dict(
                subject_id=self.subject_id,
                hadm_id=c.hadm_id,
                micro_specimen_id=sid,
                chartdate=[day],
                charttime=[t],
                spec_itemid=spec_itemid,
                spec_type_desc=spec_desc,
                test_seq=1,
                storedate=[store // 86400 * 86400],
                storetime=[store],
                test_itemid=test_itemid,
                test_name=test_name,
            )
            if not positive:
                self.s.t["microbiologyevents"].add(
                    1, microevent_id=self.ids.take("microevent"), comments="NO GROWTH.", **common
                )
                continue
            org_id, org = V.ORGANISMS[co.organism]
            for ab_id, ab in V.SUSCEPTIBILITY:
                resistant = rng.random() < 0.15
                self.s.t["microbiologyevents"].add(
                    1,
                    microevent_id=self.ids.take("microevent"),
                    org_itemid=org_id,
                    org_name=org,
                    isolate_num=1,
                    quantity="MODERATE GROWTH",
                    ab_itemid=ab_id,
                    ab_name=ab,
                    dilution_text=">=32" if resistant else "<=1",
                    dilution_comparison=">=" if resistant else "<=",
                    dilution_value=32.0 if resistant else 1.0,
                    interpretation="R" if resistant else "S",
                    comments=None,
                    **common,
                )

    # ------------------------------------------------------------------ MIMIC-CXR
    def _ed_only_visit(self, t: int, slot: int) -> None:
        """An ED visit without admission (transfers row, NULL hadm_id) with an outpatient chest film."""
        rng = self.rng
        t = _minute(t)
        out = t + int(rng.uniform(3, 8) * HOUR)
        tid = 30_000_000 + (self.i * (self.cfg.admissions_per_patient[1] + 1) + slot) * 5
        self.s.t["transfers"].add(
            1,
            subject_id=self.subject_id,
            hadm_id=None,
            transfer_id=tid,
            eventtype="ED",
            careunit=V.ED_UNIT,
            intime=[t],
            outtime=[out],
        )
        st = np.array(
            [
                0.1 * rng.random(),
                0.1 * rng.random(),
                0.1 * rng.random(),
                self.cardiomegaly,
                0.15 * rng.random(),
                0.0,
                0.02,
            ]
        )
        self._study(t + rng.uniform(0.5, 2.5) * HOUR, st, False, None, portable=False)

    def _study(self, t: float, st: np.ndarray, infected: bool, hadm_id: int | None, portable: bool) -> None:
        """One CXR study: frontal image(s), maybe a lateral; metadata, split, labels, JPGs, truth."""
        rng, cfg, s = self.rng, self.cfg, self.s
        study_id = 50_000_000 + self.i * _studies_per_patient(cfg) + self.n_study
        self.n_study += 1
        frontal = "AP" if portable or rng.random() < 0.4 else "PA"
        views = [frontal]
        if rng.random() < 0.07:
            views.append(frontal)  # a repeated frontal film: multi-image study
        if frontal == "PA" and rng.random() < 0.75:
            views.append("LL" if rng.random() < 0.15 else "LATERAL")
        t_ms = int(round(t * 1000))
        dt = np.datetime64(t_ms, "ms")
        day = str(dt.astype("datetime64[D]"))
        sec_of_day = (t_ms // 1000) % 86400
        hhmmss = (sec_of_day // 3600) * 10000 + (sec_of_day // 60 % 60) * 100 + sec_of_day % 60
        frac = f"{t_ms % 1000:03d}".rstrip("0") or "0"
        study_time = f"{hhmmss}.{frac}"
        study_date = int(day.replace("-", ""))
        sid = str(self.subject_id)
        rel_dir = f"files/p{sid[:2]}/p{sid}/s{study_id}"
        dicoms = []
        for view in views:
            dicom = "-".join(f"{x:08x}" for x in rng.integers(0, 2**32, 5, dtype=np.uint64))
            dicoms.append(dicom)
            render_seed = int(rng.integers(0, 2**63))  # own stream: tables do not depend on write_images
            rel = f"{rel_dir}/{dicom}.jpg"
            s.image_names.write(rel + "\n")
            if cfg.write_images:
                img = render_chest(
                    st, self.anatomy, view, cfg.image_px, np.random.default_rng(render_seed), cfg.nuisance
                )
                path = s.cxr_root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path, format="JPEG", quality=95)
            s.n_images += 1
            s.truth(
                dict(
                    dicom_id=dicom,
                    subject_id=self.subject_id,
                    hadm_id=hadm_id,
                    study_id=study_id,
                    time=dt.astype(object),
                    view=view,
                    **{f: float(st[k]) for k, f in enumerate(FINDINGS)},
                )
            )
        n = len(views)
        proc, _, orient = V.VIEW_META[frontal]
        s.t["cxr_metadata"].add(
            n,
            dicom_id=dicoms,
            subject_id=self.subject_id,
            study_id=study_id,
            PerformedProcedureStepDescription=proc,
            ViewPosition=views,
            Rows=cfg.image_px,
            Columns=cfg.image_px,
            StudyDate=study_date,
            StudyTime=study_time,
            ProcedureCodeSequence_CodeMeaning=proc,
            ViewCodeSequence_CodeMeaning=[V.VIEW_META[v][1] for v in views],
            PatientOrientationCodeSequence_CodeMeaning=[V.VIEW_META[v][2] or None for v in views],
        )
        s.t["cxr_split"].add(n, dicom_id=dicoms, study_id=study_id, subject_id=self.subject_id, split=self.split)
        for name in ("cxr_chexpert", "cxr_negbio"):
            labels = study_labels(
                st,
                infected,
                self.rare,
                cfg.label_noise,
                rng,
                cfg.uncertain_band,
                cfg.uncertain_rate,
                cfg.blank_negative_rate,
            )
            s.t[name].add(
                1,
                subject_id=self.subject_id,
                study_id=study_id,
                **{col: lab for col, lab in zip(V.CHEXPERT_HEADER[2:], labels)},
            )


@dataclass
class _AdmissionCtx:
    hadm_id: int
    stay_id: int | None
    admit: int
    disch: int
    hours: int
    icu: tuple[float, float] | None
    course: Course
