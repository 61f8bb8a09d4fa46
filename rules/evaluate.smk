# Evaluation: an evaluator trained on real images scores generated images (medical and
# demographic preservation, Frechet distance) beside the previous-image baseline; HTML report.

rule train_evaluator:
    input:
        images=IMAGES_H5,
        cohort=rules.cohort.output.images,
        truth=[f"{SYNTH}/truth.parquet"] if CFG.data.source == "synthetic" else [],
        code=code("train_evaluator"),
    output:
        model=directory(f"{RESULTS}/eval/evaluator"),
    log:
        "logs/train_evaluator.log",
    benchmark:
        "benchmarks/train_evaluator.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        evaluator=sec("evaluator"),
    script:
        "../workflow_scripts/train_evaluator.py"


def evaluated_samples():
    """The samples folders scored beside each other: the model, then its image controls."""
    split = CFG.sample.split
    out = {"samples": f"{RESULTS}/samples/{split}"}
    if CFG.controls.image_only:
        out["image_only"] = f"{RESULTS}/samples/image_only/{split}"
    out["previous_vae"] = f"{RESULTS}/samples/previous_vae/{split}"
    out["previous_blur"] = f"{RESULTS}/samples/previous_blur/{split}"
    return out


rule evaluate:
    input:
        unpack(lambda wildcards: evaluated_samples()),
        images=IMAGES_H5,
        triplets=EVENTS_TRIPLETS,
        evaluator=rules.train_evaluator.output.model,
        truth=[f"{SYNTH}/truth.parquet"] if CFG.data.source == "synthetic" else [],
        code=code("evaluate"),
    output:
        metrics=f"{RESULTS}/eval/metrics.json",
    log:
        "logs/evaluate.log",
    benchmark:
        "benchmarks/evaluate.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        evaluate=sec("evaluate"),
        sample=sec("sample"),
        controls=sec("controls"),
        split=CFG.sample.split,
    script:
        "../workflow_scripts/evaluate.py"


from ehrxdiff_core.config import ReportConfig


rule report:
    input:  # every path the report opens, named as the fields of evaluation/report.py's ReportInputs
        metrics=rules.evaluate.output.metrics,
        vae_quality=rules.vae_quality.output.json,
        blur_control=evaluated_samples()["previous_blur"],
        samples=evaluated_samples()["samples"],  # the image grid
        images=IMAGES_H5,
        cohort_images=rules.cohort.output.images,
        cohort_triplets=rules.cohort.output.triplets,
        triplets=EVENTS_TRIPLETS,
        events=rules.events.output.events,
        config=rules.resolved_config.output[0],
        vae=rules.train_vae.output.model,
        clip=rules.train_clip.output.model,
        ldm=rules.train_ldm.output.model,
        evaluator=rules.train_evaluator.output.model,
        code=code("report"),
    output:
        html=report(
            f"{RESULTS}/eval/report.html",
            category="Report",
            caption="../report/report.rst",
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        report=ReportConfig.from_pipeline(CFG).model_dump(mode="json"),
    script:
        "../workflow_scripts/report.py"
