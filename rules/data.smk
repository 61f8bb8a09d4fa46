# Data stages: synthetic world (demo) -> typed Parquet tables -> cohort -> images HDF5 + events.


if CFG.data.source == "synthetic":

    rule synthesize:
        input:
            code=code("synthesize"),
        output:
            tables=synthetic_tables(),
            truth=f"{SYNTH}/truth.parquet",
            jpgs=directory(f"{SYNTH}/mimic-cxr-jpg/files"),
        log:
            "logs/synthesize.log",
        benchmark:
            "benchmarks/synthesize.tsv"
        conda:
            "../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            cfg=sec("synthetic"),
            root=SYNTH,
        script:
            "../workflow_scripts/synthesize.py"


if CFG.data.source == "meds":

    rule meds_ingest:
        input:
            data=CFG.data.meds.data_dir,
            manifest=CFG.data.meds.image_manifest,
            encounters=[CFG.data.meds.encounters] if CFG.data.meds.encounters else [],
            code=code("meds_ingest"),
        output:
            tables=[ehr(t) for t in MEDS_TABLES],
            id_map=ehr(MEDS_ID_MAP),  # string subject/study/encounter ids -> the integers used downstream
        log:
            "logs/meds_ingest.log",
        benchmark:
            "benchmarks/meds_ingest.tsv"
        conda:
            "../envs/data.yaml"
        threads: CFG.data.duckdb.threads
        resources:
            mem_mb=duckdb_mem_mb(),
            runtime=120,
        params:
            meds=sec("data.meds"),
            duck=sec("data.duckdb"),
            out=f"{RESULTS}/ehr",
        script:
            "../workflow_scripts/meds_ingest.py"

else:

    rule ingest:
        input:
            src=ingest_source,
            code=code("ingest"),
        output:
            f"{RESULTS}/ehr/{{table}}.parquet",
        log:
            "logs/ingest/{table}.log",
        benchmark:
            "benchmarks/ingest/{table}.tsv"
        conda:
            "../envs/data.yaml"
        threads: CFG.data.duckdb.threads
        resources:
            mem_mb=duckdb_mem_mb(),
            runtime=60,
        params:
            duck=sec("data.duckdb"),
        script:
            "../workflow_scripts/ingest.py"


rule cohort:
    input:
        patients=ehr("patients"),
        admissions=ehr("admissions"),
        metadata=ehr("cxr_metadata"),
        chexpert=ehr("cxr_chexpert"),
        code=code("cohort"),
    output:
        images=f"{RESULTS}/cohort/images.parquet",
        triplets=f"{RESULTS}/cohort/triplets.parquet",
    log:
        "logs/cohort.log",
    benchmark:
        "benchmarks/cohort.tsv"
    conda:
        "../envs/data.yaml"
    threads: CFG.data.duckdb.threads
    resources:
        mem_mb=duckdb_mem_mb(),
        runtime=30,
    params:
        cohort=sec("cohort"),
        duck=sec("data.duckdb"),
    script:
        "../workflow_scripts/cohort.py"


rule images:
    input:
        images=rules.cohort.output.images,
        jpgs=synthetic_jpgs(),
        code=code("images"),
    output:
        h5=f"{RESULTS}/images/cxr_{{size}}.h5",
    log:
        "logs/images/cxr_{size}.log",
    benchmark:
        "benchmarks/images/cxr_{size}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        images=sec("images"),
        cxr_root=cxr_folder(),
        inventory=image_inventory,
    script:
        "../workflow_scripts/images.py"


rule events:
    input:
        triplets=rules.cohort.output.triplets,
        tables=event_tables(),
        dictionaries=event_dictionaries(),
        code=code("events"),
    output:
        events=f"{RESULTS}/events/events.parquet",
        triplets=EVENTS_TRIPLETS,
    log:
        "logs/events.log",
    benchmark:
        "benchmarks/events.tsv"
    conda:
        "../envs/data.yaml"
    threads: CFG.data.duckdb.threads
    resources:
        mem_mb=duckdb_mem_mb(),
        runtime=120,
    params:
        events=sec("events"),
        duck=sec("data.duckdb"),
        meds=CFG.data.source == "meds",
    script:
        "../workflow_scripts/events.py"
