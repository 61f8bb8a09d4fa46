"""The samples-folder contract, kept importable here for the stages that use it; it is defined in
`ehrxdiff_core/artifacts/samples.py`."""

from ehrxdiff_core.artifacts.samples import MANIFEST_SCHEMA, sample_path, write_manifest

__all__ = ["MANIFEST_SCHEMA", "sample_path", "write_manifest"]
