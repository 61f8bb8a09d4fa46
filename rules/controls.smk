# Controls a model must beat, scored by `evaluate` beside it: the previous image through the
# autoencoder, and the previous image blurred to the model's sharpness; and the autoencoder's
# quality gate (the evaluator on real validation images vs their reconstructions).
# Layout and figures: docs/controls.md.


rule control_previous_vae:
    input:
        images=IMAGES_H5,
        triplets=EVENTS_TRIPLETS,
        vae=rules.train_vae.output.model,
        code=code("control_previous_vae"),
    output:
        samples=directory(f"{RESULTS}/samples/previous_vae/{{split}}"),
    log:
        "logs/control_previous_vae/{split}.log",
    benchmark:
        "benchmarks/control_previous_vae/{split}.tsv"
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    script:
        "../workflow_scripts/control_previous_vae.py"


rule control_previous_blur:
    input:
        images=IMAGES_H5,
        triplets=EVENTS_TRIPLETS,
        samples=f"{RESULTS}/samples/{{split}}",
        code=code("control_previous_blur"),
    output:
        samples=directory(f"{RESULTS}/samples/previous_blur/{{split}}"),
    log:
        "logs/control_previous_blur/{split}.log",
    benchmark:
        "benchmarks/control_previous_blur/{split}.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/control_previous_blur.py"


rule vae_quality:
    input:
        images=IMAGES_H5,
        cohort=rules.cohort.output.images,
        vae=rules.train_vae.output.model,
        evaluator=f"{RESULTS}/eval/evaluator",  # train_evaluator's output (evaluate.smk is included later)
        code=code("vae_quality"),
    output:
        json=f"{RESULTS}/eval/vae_quality.json",
    log:
        "logs/vae_quality.log",
    benchmark:
        "benchmarks/vae_quality.tsv"
    conda:
        "../envs/evaluate.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    script:
        "../workflow_scripts/vae_quality.py"
