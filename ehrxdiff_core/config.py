"""The whole run configuration as one pydantic model.

The Snakefile validates `config` against `PipelineConfig` at load time, so a typo, a wrong type or a
missing input path fails before any job runs, with the key's dotted path in the message. Each rule
receives only the section it depends on (as `params`), so a changed setting reruns exactly the jobs
that read it. There is one section per stage family (data, text, models, sampling, evaluation).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise ValueError("device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
    return value


Device = Annotated[str, AfterValidator(_check_device)]


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are re-validated on assignment.

    A partial nested section is merged over that field's own default, so `ldm: {train: {steps: 6}}`
    keeps the LDM's training defaults (EMA, learning rate) instead of the generic `TrainLoop` ones.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _merge_over_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            default = field.default
            if isinstance(default, BaseModel) and isinstance(out.get(name), dict):
                out[name] = _deep_merge(default.model_dump(), out[name])
        return out


# --------------------------------------------------------------------------------------------- data


class DuckDBSettings(Section):
    """Resource limits for DuckDB; the Slurm profile asks for matching memory and threads."""

    memory_limit: str = "4GB"
    threads: int = Field(2, ge=1)
    temp_dir: str | None = None  # spill folder; default: a temp folder next to the output


class MimicSource(Section):
    """PhysioNet layout on disk: the folders that hold `hosp/`, `icu/` and `files/` + the CSVs."""

    mimiciv_root: str | None = None  # contains hosp/ and icu/
    cxr_root: str | None = None  # contains files/ and mimic-cxr-2.0.0-*.csv.gz


class MedsSource(Section):
    """Generic input: MEDS data shards plus an image manifest, for data that is not in the MIMIC layout."""

    data_dir: str | None = None  # folder of MEDS parquet shards (searched recursively)
    image_manifest: str | None = None  # CSV: subject_id, study_id, image_id, path, study_time, view, ...
    image_root: str | None = None  # paths in the manifest are relative to this folder
    encounters: str | None = None  # optional CSV: subject_id, hadm_id, start, end (else one per subject)


class DataConfig(Section):
    source: Literal["synthetic", "mimic", "meds"] = "synthetic"
    mimic: MimicSource = MimicSource()
    meds: MedsSource = MedsSource()
    duckdb: DuckDBSettings = DuckDBSettings()


class TreatmentEffects(Section):
    """How far each treatment moves a latent finding per hour while it acts (0-1 severity scale).

    All are magnitudes; the direction is fixed by the process (diuretics and tubes lower a finding, fluids
    raise it). `SyntheticConfig.effect_strength` multiplies every one of them.
    """

    diuretic_edema: float = Field(0.04, ge=0)  # per hour of a furosemide dose's ~6 h action
    diuretic_effusion: float = Field(0.018, ge=0)
    fluids_edema: float = Field(0.035, ge=0)  # per hour of a bolus's ~3 h
    fluids_effusion: float = Field(0.012, ge=0)
    antibiotic_consolidation: float = Field(0.03, ge=0)  # at full effect (reached ~8 h into a course)
    chest_tube_pneumothorax: float = Field(0.14, ge=0)
    chest_tube_effusion: float = Field(0.04, ge=0)


class SyntheticConfig(Section):
    """The MIMIC-shaped synthetic world (demo and tests)."""

    patients: int = Field(60, ge=1)
    seed: int = 0
    image_px: int = Field(256, ge=32)  # side of the rendered JPGs
    admissions_per_patient: tuple[int, int] = (1, 2)
    studies_per_admission: tuple[int, int] = (2, 5)
    effect_strength: float = Field(1.0, ge=0)  # how strongly treatments move the findings
    effects: TreatmentEffects = TreatmentEffects()  # per-treatment effect sizes (times effect_strength)
    # share of diuretic / fluid / antibiotic decisions drawn by a coin flip at a fixed base rate instead of from
    # the patient's state (a randomised trial inside the world), so the events tell what the previous image
    # cannot; 0 = every decision from the state (docs/synthetic_world.md has the measured effect)
    randomized_treatment: float = Field(0.6, ge=0, le=1)
    # scale of each film's pose (rotation, scale, shift) and exposure (gamma) change: 1 = the full range,
    # 0 = every film of a patient and view in the same position and exposure (a diagnostic world)
    nuisance: float = Field(1.0, ge=0, le=1)
    label_noise: float = Field(0.05, ge=0, le=0.5)  # share of certain labels flipped
    uncertain_band: float = Field(0.08, ge=0, le=0.5)  # half-width of the band around a threshold ...
    uncertain_rate: float = Field(0.5, ge=0, le=1)  # ... inside which a label is -1 (uncertain) this often
    blank_negative_rate: float = Field(0.6, ge=0, le=1)  # negatives left blank (not mentioned), as reports do
    # vitals density: charting times per ICU hour for each vital sign (~3.9 chartevents rows per unit per ICU
    # hour, ~435 rows per patient per unit with the other defaults); scale up for benchmarks, e.g.
    # 20,000 patients x 12 ~ 100 M rows
    chartevent_rate_per_hour: float = Field(4.0, ge=0)
    lab_rate_per_hour: float = Field(0.5, ge=0)  # blood draws per admission hour (each a 3-5 item panel)
    write_images: bool = True  # False: metadata/labels/truth only, no JPGs (data benchmarks)
    gzip_level: int = Field(6, ge=1, le=9)  # 1 for fast benchmark worlds


class SplitConfig(Section):
    fractions: dict[str, float] = {"train": 0.8, "valid": 0.1, "test": 0.1}
    seed: int = 42
    key_file: str | None = (
        None  # JSON {"train": [pair ids], "valid": [...], "test": [...]} (paper's dataset_split.json)
    )

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitConfig:
        if set(self.fractions) != {"train", "valid", "test"}:
            raise ValueError("fractions must have exactly the keys train, valid, test")
        negative = {k: v for k, v in self.fractions.items() if v < 0}
        if negative:
            raise ValueError(f"fractions cannot be negative, got {negative}")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {sum(self.fractions.values())}")
        return self


class CohortConfig(Section):
    views: list[str] = ["AP", "PA"]
    # admissions of patients younger than this are left out (paper: 18); null keeps every image, including
    # those of subjects without an age (MEDS data without `age`/MEDS_BIRTH)
    min_age: int | None = Field(18, ge=0)
    max_gap_hours: float = Field(48.0, gt=0)  # strict: gap < max_gap_hours
    pairing: Literal["all", "consecutive"] = "all"
    split: SplitConfig = SplitConfig()


class ImagesConfig(Section):
    size: int = Field(64, ge=8)  # a multiple of the autoencoder's and the U-Net's downsampling (checked below)
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    # stretch is what the paper does: bicubic to a square without keeping the aspect ratio;
    # pad keeps it (black bands on the short side), center_crop keeps the central square
    resize: Literal["stretch", "pad", "center_crop"] = "stretch"
    # JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) that still covers size x size, then bicubic
    # to the square: 4-10x faster on MIMIC-size images; false decodes every pixel first (bit-exact to Pillow)
    jpeg_draft: bool = True
    # persistent cache of decoded images keyed by file (path, bytes, mtime): a cohort change decodes nothing
    # already decoded; keep it between runs, delete it to reclaim the space
    cache_dir: str = "results/images/cache"
    cache_shard_images: int = Field(4096, ge=1)  # decoded images per cache shard (unit of resumable work)


def _registered_event_table(name: str) -> str:
    # imported here, not at the top: the registry's own imports import this module
    from ehrxdiff_core.data.tables import EVENT_TABLES

    if name not in EVENT_TABLES:
        raise ValueError(f"unknown event table {name!r}; registered: {', '.join(EVENT_TABLES)}")
    return name


def _default_event_tables() -> list[str]:
    from ehrxdiff_core.data.tables import default_event_tables

    return default_event_tables()


# a table name of the registry in ehrxdiff_core/data/tables.py (checked when the config is validated)
EventTableName = Annotated[str, AfterValidator(_registered_event_table)]


class EventsConfig(Section):
    max_events: int = Field(1024, ge=1)
    # the event tables to read, by registry name; default: every table registered as a default, the paper's seven
    tables: list[EventTableName] = Field(default_factory=_default_event_tables, min_length=1)
    # the paper's row filter of each table (its registry entry's `filter`): blood gas + CRP labs, whitelisted
    # drugs, chart categories, respiratory specimens, procedure categories; false keeps every row
    paper_filters: bool = True
    prescription_whitelist: str | None = None  # JSON {antibiotic: [...], cardiac_lung: [...]}; default: shipped copy
    round_decimals: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _unique_tables(self) -> EventsConfig:
        if len(set(self.tables)) != len(self.tables):
            raise ValueError(f"tables lists a table twice: {self.tables}")
        return self


# --------------------------------------------------------------------------------------------- text


class EncoderConfig(Section):
    name: Literal["minilm", "hf", "tiny-random"] = "minilm"
    path: str | None = None  # local folder for `hf`
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(256, ge=8)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(64, ge=1)
    tiny_dim: int = Field(32, ge=4)  # width of the tiny-random encoder (tests)


class RagIndexConfig(Section):
    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    approximate_above: int = Field(50_000, ge=1)  # corpus size past which `auto` picks an approximate index
    ivf_nlist: int = Field(256, ge=1)
    ivf_nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=2)
    hnsw_ef_search: int = Field(64, ge=1)  # HNSW search breadth (recall vs speed)
    use_gpu: Literal["auto", "never"] = "auto"


class RagConfig(Section):
    enabled: bool = True
    top_k: int = Field(2, ge=0)
    min_score: float = Field(0.3, ge=-1, le=1)  # cosine similarity
    template: str = "{event} | context: {snippets}{flag}"
    abnormal_flag: bool = True
    index: RagIndexConfig = RagIndexConfig()


class RewriteConfig(Section):
    enabled: bool = False
    model_path: str | None = None  # local causal LM folder
    max_new_tokens: int = Field(64, ge=1)


class TextConfig(Section):
    encoder: EncoderConfig = EncoderConfig()
    rag: RagConfig = RagConfig()
    rewrite: RewriteConfig = RewriteConfig()
    cache_dir: str = "results/embeddings/cache"  # persistent content-addressed cache (survives reruns)
    cache_shard_texts: int = Field(50_000, ge=1)  # new texts encoded per cache shard (unit of resumable work)
    # per-text value features beside the embedding (docs/numeric_features.md); the paper used text only
    numeric_features: bool = True


# ------------------------------------------------------------------------------------------- models


class TrainLoop(Section):
    """Settings shared by every training loop."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    bf16: bool = True  # autocast on CUDA only
    channels_last: bool = False
    gradient_checkpointing: bool = False
    compile: bool = False
    num_workers: int = Field(0, ge=0)
    gpus: int = Field(1, ge=1)  # >1: run under torchrun over the allocation's GPUs
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after linear warmup
    cosine_cycle_steps: int | None = Field(None, ge=1)  # cosine restarts every N steps (paper CLIP: 500)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


PRETRAINED_REQUIRED = (
    "vae.pretrained: must be set, because vae.require_pretrained is true (as in "
    "configs/paper.yaml): point it at Cheff's "
    "cheff_autoencoder.pt (or a .safetensors conversion, or a diffusers folder). To train an autoencoder here instead "
    "(L1 + KL loss only, vae.train.steps steps: blurrier than Cheff's), set vae.require_pretrained: false"
)
SCALE_WITHOUT_IMPORT = (
    "vae.scaling_factor: {} is set but vae.pretrained is not; the scale applies to an imported autoencoder only, "
    "a self-trained one's is estimated from its data. Remove vae.scaling_factor, or set vae.pretrained"
)


class VaeConfig(Section):
    pretrained: str | None = None  # diffusers folder, or a Cheff/LDM autoencoder checkpoint file
    latent_channels: int = Field(3, ge=1)
    block_out_channels: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [32, 64, 64]
    layers_per_block: int = Field(1, ge=1)
    kl_weight: float = Field(1e-6, ge=0)
    # > 0: a patch discriminator trains beside the autoencoder (hinge loss; generator term weighted as in LDM,
    # adaptively, times this); 0: L1 + KL only (the default). LDM's KL-autoencoder configs use 0.5
    discriminator_weight: float = Field(0.0, ge=0)
    discriminator_start: int = Field(0, ge=0)  # the step from which the discriminator trains and is used (LDM: 50001)
    discriminator_layers: int = Field(2, ge=1)  # stride-2 convolutions of the patch discriminator (pix2pix: 3)
    # latent scale of an imported autoencoder (vae.pretrained) only; None: a Cheff/LDM checkpoint file gets
    # the Cheff constant 0.18215, a diffusers folder its own config's value. A self-trained autoencoder's
    # scale is always estimated from its data (1 / std of the latents), so setting it without vae.pretrained
    # is an error.
    scaling_factor: float | None = Field(None, gt=0)
    # true: vae.pretrained must be set (the paper preset: a self-trained autoencoder gets an L1 + KL loss only,
    # far from Cheff's recipe); false trains one here when vae.pretrained is unset
    require_pretrained: bool = False
    train: TrainLoop = TrainLoop(steps=300, batch_size=16, lr=4e-4)

    @model_validator(mode="after")
    def _check_pretrained(self) -> VaeConfig:
        if self.pretrained is None and self.require_pretrained:
            raise ValueError(PRETRAINED_REQUIRED)
        if self.pretrained is None and self.scaling_factor is not None:
            raise ValueError(SCALE_WITHOUT_IMPORT.format(self.scaling_factor))
        return self


class ClipConfig(Section):
    pretrained_vision: str | None = None  # local OpenAI CLIP folder (transformers layout)
    image_size: int | None = Field(None, ge=8)  # default: images.size
    patch_size: int = Field(8, ge=1)
    vision_width: int = Field(64, ge=1)
    vision_layers: int = Field(2, ge=1)
    vision_heads: int = Field(4, ge=1)
    tab_width: int | None = Field(64, ge=1)  # Linear(event dim -> tab_width) before the transformer; None: none (paper)
    tab_layers: int = Field(2, ge=1)
    tab_heads: int = Field(4, ge=1)
    tab_ff: int = Field(128, ge=1)
    tab_dropout: float = Field(0.1, ge=0, lt=1)
    # dropout on the attention weights; None: tab_dropout (as torch's TransformerEncoderLayer). 0 lets the
    # attention run on the fused (flash) kernel: 1.6x faster LDM steps on CPU at the demo's ~300 events per batch
    tab_attention_dropout: float | None = Field(None, ge=0, lt=1)
    embed_dim: int = Field(64, ge=1)  # width of the event tokens and of the contrastive embedding (paper 768)
    pooling: Literal["masked_mean", "paper"] = "masked_mean"
    augment_crop_scale: float | None = Field(0.75, gt=0, le=1)  # RandomResizedCrop min scale; None: off
    train: TrainLoop = TrainLoop(steps=400, batch_size=32, lr=5e-4, weight_decay=0.2, warmup_steps=20)


class AdapterConfig(Section):
    mode: Literal["paper", "masked"] = "masked"  # demo: masked (cost ∝ real events); paper preset: paper
    use_ehr: bool = True
    use_vit: bool = True
    use_vae: bool = True
    context_tokens: int | None = Field(None, ge=1)  # paper: 1024; default: events.max_events


class LdmConfig(Section):
    block_out_channels: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [32, 64, 64]
    attention_levels: list[bool] = [False, True, True]  # one per block
    layers_per_block: int = Field(1, ge=1)
    num_heads: int = Field(4, ge=1)  # attention heads per block (diffusers' `attention_head_dim`, which counts heads)
    cross_attention_dim: int = Field(64, ge=1)
    conditioning: Literal["crossattn", "hybrid"] = (
        "hybrid"  # demo: hybrid (learns the change in a CPU budget); paper: crossattn
    )
    hybrid_latent_scaled: bool = True  # hybrid concat uses scaled mode latent; False: unscaled (original code)
    # What the U-Net denoises: `image` = the target latent (paper); `residual` = the target latent minus the
    # previous image's, scaled to unit std on the training pairs, added back to the previous latent when sampling
    # (a deviation: a model that predicts no change reproduces the previous image through the autoencoder)
    target: Literal["image", "residual"] = "image"
    beta_start: float = Field(0.0015, gt=0, lt=1)
    beta_end: float = Field(0.0295, gt=0, lt=1)
    num_train_timesteps: int = Field(1000, ge=2)
    prediction_type: Literal["epsilon", "v_prediction"] = (
        "v_prediction"  # demo: v (learns in a CPU budget); paper: epsilon
    )
    null_augmentation: bool = False
    target_affine: bool = False  # RandomAffine(±10°, scale 0.9–1.1) on targets (the original's w_null runs)
    # Move each training target onto its previous image (rotation, scale, shift; `models/registration.py`) so the
    # model predicts the next film in the previous film's position (a deviation: the paper trains on raw targets)
    register_target: bool = False
    # With register_target: also match each moved target's exposure to its previous image (one power law per
    # film, `registration.fit_gamma`), so the model need not draw the exposure change either
    register_exposure: bool = False
    cond_dropout: float = Field(0.0, ge=0, le=1)
    train_clip: bool = True  # CLIP encoders trained jointly with the U-Net (paper); False: frozen
    adapter: AdapterConfig = AdapterConfig()
    train: TrainLoop = TrainLoop(steps=1000, batch_size=16, lr=1e-3, ema_decay=0.999)

    @model_validator(mode="after")
    def _check_unet(self) -> LdmConfig:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but block_out_channels has "
                f"{len(self.block_out_channels)}: give one per block"
            )
        if self.beta_end <= self.beta_start:
            raise ValueError(f"beta_end ({self.beta_end}) must be larger than beta_start ({self.beta_start})")
        if self.register_target and self.target_affine:
            raise ValueError(
                "register_target and target_affine contradict each other: one moves each target onto its previous "
                "image, the other jitters it away again; set one of them to false"
            )
        if self.register_exposure and not self.register_target:
            raise ValueError(
                "register_exposure matches the exposure of a target already moved onto its previous image: "
                "it needs register_target: true"
            )
        return self


class SampleConfig(Section):
    split: Literal["train", "valid", "test"] = "test"
    sampler: Literal["ddim", "dpmsolver++"] = "ddim"
    steps: int = Field(25, ge=1)
    eta: float = Field(1.0, ge=0, le=1)
    guidance_scale: float = Field(1.0, ge=0)  # 1: no guidance
    seed: int = 42
    batch_size: int = Field(16, ge=1)
    use_ema: bool = True
    max_pairs: int | None = Field(None, ge=1)  # null: every pair of the split
    n_seeds: int = Field(2, ge=1)  # seeds per pair; the evaluation averages the evaluator's scores over them
    # latent: the image is the decoded latent (paper). previous_plus_change: the previous film plus the decoded
    # change, D(previous latent + change) - D(previous latent), so what does not change keeps the previous
    # film's pixels instead of the autoencoder's reconstruction of them (a deviation; README)
    compose: Literal["latent", "previous_plus_change"] = "latent"
    change_blur_px: float = Field(0.0, ge=0)  # previous_plus_change: Gaussian sigma (pixels) on the decoded change


class ControlsConfig(Section):
    """Control models trained and scored beside ehrxdiff, to show whether a prediction follows the events."""

    image_only: bool = True  # the same LDM, same budget and seed, trained and sampled with every event masked


# --------------------------------------------------------------------------------------- evaluation


class EvaluatorConfig(Section):
    arch: Literal["small_cnn", "densenet121"] = "small_cnn"
    width: int = Field(32, ge=4)  # small_cnn base channels (features: 4 x width)
    augment: bool = True  # small random affine + brightness/contrast jitter while training
    train: TrainLoop = TrainLoop(steps=1000, batch_size=32, lr=1e-3)  # ~45 s on 2 cores: a sharper ceiling


class EvaluateConfig(Section):
    inception_weights: str | None = None  # pt_inception-2015-12-05-6726825d.pth (checked by hash)
    xrv_weights: str | None = None  # torchxrayvision densenet121-res224-all weights file
    seed: int = 123
    bootstrap: int = Field(
        2000, ge=0
    )  # paired patient-level bootstrap resamples for the comparisons' 95 % intervals (0: off)
    min_label_positives: int = Field(
        20, ge=1
    )  # a label enters a macro's fixed set with at least this many positives...
    min_label_negatives: int = Field(20, ge=1)  # ...and this many negatives among the subset's targets


class ReportSettings(Section):
    """The `report` section of the config."""

    grid_pairs: int = Field(8, ge=1)
    top_events: int = Field(5, ge=0)  # most frequent event codes listed beside each grid pair


# ------------------------------------------------------------------------------------------ the run


class ComputeConfig(Section):
    device: Device = "auto"  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', 'mps'
    # share of the job's memory (the smallest of RAM, the cgroup / Slurm limit and the memory free now) that a
    # training stage may fill with its training images, split between the processes of a multi-GPU job; when
    # they do not fit, batches read them from the image store. Changes speed and memory only, never results.
    image_cache_fraction: float = Field(0.5, gt=0, le=1)


class PipelineConfig(Section):
    data: DataConfig = DataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    cohort: CohortConfig = CohortConfig()
    images: ImagesConfig = ImagesConfig()
    events: EventsConfig = Field(default_factory=EventsConfig)  # its default tables: the registry's, when validated
    text: TextConfig = TextConfig()
    vae: VaeConfig = VaeConfig()
    clip: ClipConfig = ClipConfig()
    ldm: LdmConfig = LdmConfig()
    sample: SampleConfig = SampleConfig()
    controls: ControlsConfig = ControlsConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportSettings = ReportSettings()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _check_sources(self) -> PipelineConfig:
        if self.data.source == "mimic":
            for key in ("mimiciv_root", "cxr_root"):
                if getattr(self.data.mimic, key) is None:
                    raise ValueError(f"data.mimic.{key} must be set when data.source is 'mimic'")
        if self.data.source == "meds":
            for key in ("data_dir", "image_manifest"):
                if getattr(self.data.meds, key) is None:
                    raise ValueError(f"data.meds.{key} must be set when data.source is 'meds'")
        return self

    @model_validator(mode="after")
    def _check_downstream(self) -> PipelineConfig:
        """Settings each valid alone that a later stage could not run with: fail here, before any job."""
        problems = []
        fractions = self.cohort.split.fractions
        if self.cohort.split.key_file is None:
            # train: every model; valid: the autoencoder gate and the evaluator's quality; the sampled split
            for split, why in (
                ("train", "the models train on it"),
                ("valid", "the autoencoder gate scores it"),
                (self.sample.split, "sample.split generates and scores it"),
            ):
                if fractions[split] <= 0:
                    problems.append(f"cohort.split.fractions.{split}: must be > 0 ({why}), got {fractions[split]}")
        size = self.images.size
        vae_factor = 2 ** (len(self.vae.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.ldm.block_out_channels) - 1)
        if self.vae.pretrained is None:  # an imported autoencoder brings its own factor (checked when loaded)
            if size % vae_factor:
                problems.append(
                    f"images.size: {size} is not a multiple of the autoencoder's downsampling factor {vae_factor} "
                    f"(2 ** (len(vae.block_out_channels) - 1))"
                )
            elif (size // vae_factor) % unet_factor:
                problems.append(
                    f"images.size: the latent side {size // vae_factor} (images.size / {vae_factor}) is not a multiple "
                    f"of the U-Net's downsampling factor {unet_factor} (2 ** (len(ldm.block_out_channels) - 1))"
                )
        for key, channels in (
            ("vae.block_out_channels", self.vae.block_out_channels),
            ("ldm.block_out_channels", self.ldm.block_out_channels),
        ):
            groups = min(32, min(channels))  # GroupNorm groups, as the models build them
            if any(c % groups for c in channels):
                problems.append(f"{key}: every width must be a multiple of {groups} (GroupNorm groups), got {channels}")
        for c, attn in zip(self.ldm.block_out_channels, self.ldm.attention_levels):
            if attn and c % self.ldm.num_heads:
                problems.append(f"ldm.num_heads: {self.ldm.num_heads} does not divide the attention block width {c}")
        clip_size = self.clip.image_size or size
        if clip_size % self.clip.patch_size:
            problems.append(
                f"clip.patch_size: {self.clip.patch_size} does not divide the ViT input side {clip_size} "
                f"(clip.image_size, default images.size)"
            )
        if self.clip.vision_width % self.clip.vision_heads:
            problems.append(
                f"clip.vision_heads: {self.clip.vision_heads} does not divide clip.vision_width "
                f"{self.clip.vision_width}"
            )
        if self.clip.tab_width is not None and self.clip.tab_width % self.clip.tab_heads:
            problems.append(
                f"clip.tab_heads: {self.clip.tab_heads} does not divide clip.tab_width {self.clip.tab_width}"
            )
        if self.sample.change_blur_px > 0 and self.sample.compose != "previous_plus_change":
            problems.append(
                f"sample.change_blur_px: {self.sample.change_blur_px} blurs the decoded change of "
                f"sample.compose: previous_plus_change; sample.compose is {self.sample.compose}"
            )
        if self.sample.steps > self.ldm.num_train_timesteps:
            problems.append(
                f"sample.steps: {self.sample.steps} exceeds ldm.num_train_timesteps {self.ldm.num_train_timesteps}"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


class ReportConfig(BaseModel):
    """Every setting the report job reads, taken from a validated run config by `from_pipeline` (the
    report rule passes it as params, so a change to one of these settings reruns the report)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["train", "valid", "test"]  # the sampled split, whose pairs the image grid shows
    grid_pairs: int = Field(ge=1)
    top_events: int = Field(ge=0)

    @classmethod
    def from_pipeline(cls, cfg: PipelineConfig) -> ReportConfig:
        return cls(split=cfg.sample.split, **cfg.report.model_dump())


class ConfigError(ValueError):
    """A config problem, reported with the dotted path of the offending key."""


# Keys whose value is a path that must exist when set (dotted path -> what it is).
_INPUT_PATHS = {
    "data.mimic.mimiciv_root": "MIMIC-IV folder (holds hosp/ and icu/)",
    "data.mimic.cxr_root": "MIMIC-CXR-JPG folder (holds files/ and the metadata CSVs)",
    "data.meds.data_dir": "MEDS data folder",
    "data.meds.image_manifest": "image manifest CSV",
    "data.meds.image_root": "image folder",
    "data.meds.encounters": "encounters CSV",
    "cohort.split.key_file": "split key file (JSON)",
    "events.prescription_whitelist": "prescription whitelist (JSON)",
    "text.encoder.path": "text encoder folder",
    "text.rewrite.model_path": "rewrite language model folder",
    "vae.pretrained": "pretrained autoencoder",
    "clip.pretrained_vision": "CLIP vision model folder",
    "evaluate.inception_weights": "Inception weights file",
    "evaluate.xrv_weights": "torchxrayvision weights file",
}


def _get_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown config key")
        elif path == "<root>":  # cross-section checks name their keys themselves
            lines.extend(f"  {problem}" for problem in msg.split("\n"))
        elif isinstance(e.get("input"), dict):  # a section-level check: the section is too long to echo
            # a check that names its own key (`vae.pretrained: ...`) is printed as it is
            lines.append(f"  {msg}" if msg.startswith(f"{path}.") else f"  {path}: {msg}")
        else:
            lines.append(f"  {path}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(raw: dict[str, Any] | None, check_paths: bool = True, base_dir: str | Path = ".") -> PipelineConfig:
    """Validate a raw config mapping; raise ConfigError naming every bad key by its dotted path."""
    try:
        cfg = PipelineConfig.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError("invalid configuration:\n" + _format_errors(err)) from None
    if check_paths:
        missing = []
        for dotted, what in _INPUT_PATHS.items():
            value = _get_dotted(cfg, dotted)
            if value is not None and not (Path(base_dir) / value).exists():
                missing.append(f"  {dotted}: {what} not found: {value}")
        if missing:
            raise ConfigError("invalid configuration:\n" + "\n".join(missing))
    return cfg


DEMO_CONFIG = "config.yaml"


def read_config_files(paths: list[str | Path] | tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """The raw config a run gets from these files, as the Snakefile builds it.

    Later files are deep-merged over earlier ones (Snakemake's `--configfile A B`); without any file the
    demo's `config.yaml` is read. The demo file is never merged under a user's file: their keys fall back to
    the defaults of `PipelineConfig`.
    """
    import yaml

    raw: dict[str, Any] = {}
    for path in list(paths) or [DEMO_CONFIG]:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a YAML mapping, got {type(data).__name__}")
        raw = _deep_merge(raw, data)
    return raw


def section(cfg: PipelineConfig, dotted: str) -> dict[str, Any]:
    """A plain-dict copy of one section, for a rule's `params` (compared by Snakemake on rerun)."""
    return _get_dotted(cfg, dotted).model_dump(mode="json")


def write_resolved_config(config: dict[str, Any], out: str | Path) -> None:
    """The validated config (every key, defaults filled in) as YAML: re-validated first, written atomically."""
    import yaml

    from ehrxdiff_core.atomic import atomic_path

    resolved = load_config(config, check_paths=False).model_dump(mode="json")
    header = "# The configuration this run validated: every key, with the defaults filled in.\n"
    with atomic_path(Path(out)) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump(resolved, sort_keys=False))
