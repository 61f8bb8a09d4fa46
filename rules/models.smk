# Models: autoencoder, CXR-EHR CLIP, latent diffusion with the fusion adapter, sampling.
# Training jobs keep a resumable work folder next to the output (named by a hash of their
# params), so a preempted or failed job resumes on retry instead of starting over.

rule train_vae:
    input:
        images=IMAGES_H5,
        triplets=EVENTS_TRIPLETS,
        code=code("train_vae"),
    output:
        model=directory(f"{RESULTS}/models/vae"),
    log:
        "logs/train_vae.log",
    benchmark:
        "benchmarks/train_vae.tsv"
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=CFG.vae.train.gpus,
    params:
        vae=sec("vae"),
        work=f"{RESULTS}/work/vae-{params_hash(sec('vae'))}",
    script:
        "../workflow_scripts/train_vae.py"


rule train_clip:
    input:
        images=IMAGES_H5,
        embeddings=rules.embed.output.h5,
        triplets=EVENTS_TRIPLETS,
        code=code("train_clip"),
    output:
        model=directory(f"{RESULTS}/models/clip"),
    log:
        "logs/train_clip.log",
    benchmark:
        "benchmarks/train_clip.tsv"
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=CFG.clip.train.gpus,
    params:
        clip=sec("clip"),
        max_events=CFG.events.max_events,
        work=f"{RESULTS}/work/clip-{params_hash(sec('clip'), CFG.events.max_events)}",
    script:
        "../workflow_scripts/train_clip.py"


rule train_ldm:
    input:
        images=IMAGES_H5,
        embeddings=rules.embed.output.h5,
        triplets=EVENTS_TRIPLETS,
        vae=rules.train_vae.output.model,
        clip=rules.train_clip.output.model,
        code=code("train_ldm"),
    output:
        model=directory(f"{RESULTS}/models/ldm"),
    log:
        "logs/train_ldm.log",
    benchmark:
        "benchmarks/train_ldm.tsv"
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
        gpu=CFG.ldm.train.gpus,
    params:
        ldm=sec("ldm"),
        max_events=CFG.events.max_events,
        work=f"{RESULTS}/work/ldm-{params_hash(sec('ldm'), CFG.events.max_events)}",
        mask_events=False,
    script:
        "../workflow_scripts/train_ldm.py"


# The image-only control: the same LDM (config, budget, seed, pairs) with every event masked, so the
# comparison with ehrxdiff shows what the events add. Its spec records mask_events; sampling reads it.
use rule train_ldm as train_ldm_image_only with:
    output:
        model=directory(f"{RESULTS}/models/ldm_image_only"),
    log:
        "logs/train_ldm_image_only.log",
    benchmark:
        "benchmarks/train_ldm_image_only.tsv"
    params:
        work=f"{RESULTS}/work/ldm_image_only-{params_hash(sec('ldm'), CFG.events.max_events, 'mask_events')}",
        mask_events=True,


rule sample:
    input:
        images=IMAGES_H5,
        embeddings=rules.embed.output.h5,
        triplets=EVENTS_TRIPLETS,
        vae=rules.train_vae.output.model,
        ldm=rules.train_ldm.output.model,
        code=code("sample"),
    output:
        samples=directory(f"{RESULTS}/samples/{{split}}"),
    log:
        "logs/sample/{split}.log",
    benchmark:
        "benchmarks/sample/{split}.tsv"
    conda:
        "../envs/models.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        sample=sec("sample"),
        max_events=CFG.events.max_events,
    script:
        "../workflow_scripts/sample.py"


use rule sample as sample_image_only with:
    input:
        images=IMAGES_H5,
        embeddings=rules.embed.output.h5,
        triplets=EVENTS_TRIPLETS,
        vae=rules.train_vae.output.model,
        ldm=rules.train_ldm_image_only.output.model,
        code=code("sample"),
    output:
        samples=directory(f"{RESULTS}/samples/image_only/{{split}}"),
    log:
        "logs/sample_image_only/{split}.log",
    benchmark:
        "benchmarks/sample_image_only/{split}.tsv"
