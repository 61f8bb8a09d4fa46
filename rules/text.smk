# Text stage: clinical knowledge corpus -> FAISS index -> deduplicated event embeddings.


rule knowledge:
    input:
        dictionaries=[ehr(d) for d in dictionaries()],  # every one the registered event tables join
        code=code("knowledge") + [GLOSSARY],
    output:
        knowledge=f"{RESULTS}/rag/knowledge.parquet",
    log:
        "logs/knowledge.log",
    conda:
        "../envs/text.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/knowledge.py"


rule rag_index:
    input:
        knowledge=rules.knowledge.output.knowledge,
        code=code("rag_index"),
    output:
        index=f"{RESULTS}/rag/index.faiss",
        sidecar=f"{RESULTS}/rag/index.faiss.json",
    log:
        "logs/rag_index.log",
    benchmark:
        "benchmarks/rag_index.tsv"
    conda:
        "../envs/text.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        encoder=sec("text.encoder"),
        index=sec("text.rag.index"),
    script:
        "../workflow_scripts/rag_index.py"


rule embed:
    input:
        events=rules.events.output.events,
        triplets=rules.events.output.triplets,
        knowledge=rules.knowledge.output.knowledge,
        index=rules.rag_index.output.index,
        sidecar=rules.rag_index.output.sidecar,
        code=code("embed") + [GLOSSARY],
    output:
        h5=f"{RESULTS}/embeddings/events.h5",
    log:
        "logs/embed.log",
    benchmark:
        "benchmarks/embed.tsv"
    conda:
        "../envs/text.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=1,
        runtime=240,
    params:
        text=sec("text"),
    script:
        "../workflow_scripts/embed.py"
