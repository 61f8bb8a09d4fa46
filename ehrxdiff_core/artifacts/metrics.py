"""The typed layout of `eval/metrics.json`: the evaluate stage writes through it, the report and the
tests read through it, so a renamed or missing key fails where it is produced, not in a table later.

Layout: `methods` holds one object per method (the model, its controls, the ceilings; each with its
headline metrics' own 95 % `intervals`), `comparisons`
one list per `<model>_vs_<control>` (one entry per headline metric), `label_sets` the label sets fixed
before scoring, `truth` how the synthetic world's hidden state was used (or why it was not), and
`settings` what was scored and how. Every number that cannot be computed is null with a `reason`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Auroc(_Strict):
    value: float | None
    n_pos: int
    n_neg: int
    reason: str | None = None
    n_excluded: int | None = None  # sex AUROC: recorded genders other than M/F


class Correlation(_Strict):
    value: float | None
    n: int
    p_value: float | None = None
    reason: str | None = None
    note: str | None = None


class Macro(_Strict):
    value: float | None
    n_labels: int
    label_set: list[str]
    fixed: bool
    undefined_labels: list[str]
    reason: str | None = None


class SubsetAuroc(_Strict):
    per_label: dict[str, Auroc]
    micro: Auroc
    macro: Macro
    n_scored: int


class Fid(_Strict):
    computed: bool
    reason: str | None = None
    extractor: str | None = None
    preprocessing: str | None = None
    value: float | None = None  # mean of the two cross-half distances
    value_a_vs_b: float | None = None
    value_b_vs_a: float | None = None
    floor: float | None = None  # real-vs-real distance between the two halves
    above_floor: float | None = None
    algorithm: str | None = None
    n_a: int | None = None
    n_b: int | None = None
    dim: int | None = None
    protocol: str | None = None
    note: str | None = None


class TruthFinding(_Strict):
    threshold: float
    partial_r: Correlation
    crossing_auroc: Auroc


class TruthMetrics(_Strict):
    computed: bool
    reason: str | None = None
    per_finding: dict[str, TruthFinding] = {}
    partial_r_macro: Macro | None = None
    crossing_auroc_macro: Macro | None = None


class Undefined(_Strict):
    value: None = None
    reason: str


class Interval(_Strict):
    """A headline metric of one method with its own 95 % patient-level bootstrap interval."""

    value: float | None
    ci95: list[float] | None
    n_boot: int
    n_valid: int
    reason: str | None = None
    note: str | None = None


class MethodMetrics(_Strict):
    kind: Literal["model", "control", "ceiling"]
    description: str
    n_pairs: int
    n_seeds: dict[str, int] | None = None  # min/max images per pair averaged (generated methods)
    generation: dict[str, Any] | None = None
    auroc: dict[Literal["all", "diff", "same"], SubsetAuroc]
    sex_auroc: Auroc | Undefined
    age_pearson_r: Correlation | Undefined
    # methods scored from a samples folder (the model and the image controls): the age r of each seed's images
    # alone, in seed order (`age_pearson_r` averages the evaluator's age over the seeds first); None for
    # previous_image, real_target and oracle, and in files written before it existed
    age_pearson_r_per_seed: list[Correlation | Undefined] | None = None
    age_mae_years: float | None
    fid: dict[str, Fid]
    truth: TruthMetrics
    intervals: dict[str, Interval]  # headline metric -> value and 95 % interval (same resamples as comparisons)


class Comparison(_Strict):
    metric: str
    model: str
    control: str
    model_value: float | None
    control_value: float | None
    delta: float | None
    ci95: list[float] | None
    n_boot: int
    n_valid: int
    n_patients: int
    fraction_delta_le_0: float | None
    verdict: Literal["better", "worse", "no significant difference", "not computable"]
    reason: str | None = None
    note: str | None = None


class LabelSets(_Strict):
    rule: str
    auroc: dict[Literal["all", "diff", "same"], list[str]]
    truth: dict[Literal["partial_r", "crossing_auroc"], list[str]]
    candidates: list[str]


class TruthInfo(_Strict):
    used: bool
    reason: str | None = None
    n_pairs_with_truth: int = 0
    findings: dict[str, dict[str, Any]] = {}
    dynamic: list[str] = []
    dynamic_rule: str | None = None


class MetricsFile(_Strict):
    schema_version: Literal[3] = SCHEMA_VERSION
    model: str
    methods: dict[str, MethodMetrics]
    comparisons: dict[str, list[Comparison]]
    headline_metrics: dict[str, str]
    label_sets: LabelSets
    truth: TruthInfo
    settings: dict[str, Any]

    def value(self, method: str, metric: str) -> float | None:
        """A headline metric of one method, read from its block (`auroc_diff_macro`, `truth_partial_r_macro`, ...)."""
        m = self.methods[method]
        if metric.startswith("auroc_"):
            return m.auroc[metric.split("_")[1]].macro.value
        macro = getattr(m.truth, metric.removeprefix("truth_"), None) if m.truth.computed else None
        return None if macro is None else macro.value

    def interval(self, method: str, metric: str) -> Interval | None:
        """A headline metric of one method with its 95 % interval (None when the metric is not headline)."""
        return self.methods[method].intervals.get(metric)

    def comparison(self, control: str, metric: str) -> Comparison | None:
        for entry in self.comparisons.get(f"{self.model}_vs_{control}", []):
            if entry.metric == metric:
                return entry
        return None


def read_metrics(path: str | Path) -> MetricsFile:
    """Read and validate `eval/metrics.json`."""
    return MetricsFile.model_validate(json.loads(Path(path).read_text()))
