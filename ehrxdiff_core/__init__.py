"""ehrxdiff: predict the next chest X-ray from the previous one and the EHR events in between.

The project is offline by design, so the Hugging Face offline flags are set here, before anything
else is imported: `huggingface_hub` (imported by diffusers and transformers) reads `HF_HUB_OFFLINE`
once, at its own import, and diffusers copies that value when it is imported, so a flag set later
(e.g. when a job starts) would not reach them. The flags are assigned, not defaulted: a value
already in the environment (`HF_HUB_OFFLINE=0`) does not turn network access back on.
"""

import os as _os
import sys as _sys

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def set_offline_flags() -> None:
    """Set every flag in `OFFLINE_FLAGS` to "1"; idempotent, and run when the package is imported.

    When `huggingface_hub` was imported first (a user's session, not a pipeline job), its own flag,
    which its downloads check, is switched on as well.
    """
    for name in OFFLINE_FLAGS:
        _os.environ[name] = "1"
    hub_constants = _sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True


set_offline_flags()

__version__ = "0.1.0"
