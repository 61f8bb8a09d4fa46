# Config validation, artifact paths and the input helpers every rule family uses.
import hashlib
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from ehrxdiff_core.config import ConfigError, load_config, section
from ehrxdiff_core.provenance import script_sources

try:
    CFG = load_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

RESULTS = "results"
LIB = Path(workflow.basedir) / "ehrxdiff_core"
SCRIPTS = Path(workflow.basedir) / "workflow_scripts"
GLOSSARY = str(LIB / "resources/glossary.csv")  # data the text stages read beside their code
SYNTH = f"{RESULTS}/synthetic"

from ehrxdiff_core.data.events import MEDS_EVENTS
from ehrxdiff_core.data.meds import ID_MAP as MEDS_ID_MAP, MEDS_TABLES
from ehrxdiff_core.data.images import image_inventory_hash
from ehrxdiff_core.data.sources import cxr_root, source_path
from ehrxdiff_core.data.tables import EVENT_TABLES, TABLE_NAMES, default_event_tables, dictionaries, ingested_tables


wildcard_constraints:
    table="|".join(TABLE_NAMES),
    split="train|valid|test",
    size=r"\d+",


def sec(dotted):
    """One config section as a plain dict: a rule's params, so a changed setting reruns its job."""
    return section(CFG, dotted)


def code(script):
    """Library source files the output of the rule running `workflow_scripts/<script>.py` depends on:
    the library modules that script imports, and their imports, transitively (found by reading the
    imports, no list kept by hand). Editing one reruns that rule and what is downstream of it."""
    return script_sources(SCRIPTS / f"{script}.py")


def params_hash(*values):
    """Short hash of a rule's params: names the resumable work folder of a training job."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def ehr(table):
    return f"{RESULTS}/ehr/{table}.parquet"


def ingest_source(wildcards):
    return str(source_path(wildcards.table, CFG.data, Path(SYNTH)))


def cxr_folder():
    return str(cxr_root(CFG.data, Path(SYNTH)))


def synthetic_jpgs():
    """The synthetic world's JPG folder, an output of `synthesize`, as an input of the images rule
    (it ties that rule to the one that draws the images). A real image folder is no input: a
    folder's mtime does not change when files deeper down change, so `image_inventory` tracks
    the listed files themselves."""
    return [f"{SYNTH}/mimic-cxr-jpg/files"] if CFG.data.source == "synthetic" else []


def image_inventory(wildcards):
    """The images rule's params entry that changes when an image of the cohort is added, removed or
    rewritten (path, size, mtime of every file `cohort/images.parquet` lists), so Snakemake reruns
    the rule. Evaluated when the DAG is built and again just before the job runs. It takes only
    `wildcards`: a params function that takes `input` counts as derived from the inputs and is not
    compared between runs."""
    listing = Path(f"{RESULTS}/cohort/images.parquet")
    if not listing.exists():
        return "no cohort yet"  # the job runs anyway: its input is missing
    return image_inventory_hash(listing, Path(cxr_folder()))


def event_tables():
    if CFG.data.source == "meds":
        return [ehr(MEDS_EVENTS)]
    return [ehr(t) for t in CFG.events.tables]


def event_dictionaries():
    """The item dictionaries the selected event tables join (MEDS events come serialized: none)."""
    if CFG.data.source == "meds":
        return []
    return [ehr(d) for d in dictionaries(CFG.events.tables)]


def synthetic_tables():
    """The synthetic world's CSVs this run ingests (every non-event table and the selected event tables);
    a selected table the world does not write is a config error here, before any job."""
    others = [t for t in CFG.events.tables if t not in default_event_tables()]  # the world writes the defaults
    if others:
        from ehrxdiff_core.synthetic.vocab import FILE_PATHS  # imports the whole world: only when needed

        unknown = [t for t in others if t not in FILE_PATHS]
        if unknown:
            raise WorkflowError(
                f"events.tables: the synthetic world (data.source: synthetic) has no {', '.join(unknown)}; its "
                f"event tables are {', '.join(t for t in EVENT_TABLES if t in FILE_PATHS)}. Leave them out, or "
                "read MIMIC (data.source: mimic)"
            )
    return [str(source_path(t, CFG.data, Path(SYNTH))) for t in ingested_tables(CFG.events.tables)]


IMAGES_H5 = f"{RESULTS}/images/cxr_{CFG.images.size}.h5"
EVENTS_TRIPLETS = f"{RESULTS}/events/triplets.parquet"


def duckdb_mem_mb():
    """Memory to ask the scheduler for a DuckDB job: its memory_limit plus 1 GB of headroom."""
    units = {"KB": 1e-3, "KIB": 1e-3, "MB": 1, "MIB": 1, "GB": 1000, "GIB": 1024, "TB": 1e6, "TIB": 1024**2}
    text = CFG.data.duckdb.memory_limit.strip().upper().replace(" ", "")
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor) + 1000
    raise WorkflowError(f"data.duckdb.memory_limit: cannot read {CFG.data.duckdb.memory_limit!r} (e.g. '4GB')")


rule resolved_config:
    """The config this run validated, every key filled in: written beside the results, shown in the report."""
    output:
        f"{RESULTS}/config.resolved.yaml",
    log:
        "logs/resolved_config.log",
    localrule: True
    threads: 1
    params:
        config=CFG.model_dump(mode="json"),
    script:
        "../workflow_scripts/resolved_config.py"
