"""CheXpert label names, as in mimic-cxr-2.0.0-chexpert.csv, and their column names in our tables.

Tables use snake-case column names (`trg_pleural_effusion`) so SQL needs no quoting; the display
name is kept for reports.
"""

from __future__ import annotations

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)


def label_column(name: str) -> str:
    """'Pleural Effusion' -> 'pleural_effusion'."""
    return name.lower().replace(" ", "_")


LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(n) for n in CHEXPERT_LABELS)
DISPLAY_NAME: dict[str, str] = dict(zip(LABEL_COLUMNS, CHEXPERT_LABELS))

# The findings the evaluator scores (the paper's CheXpert evaluation uses 11 of the 14; we drop
# No Finding, Pleural Other and Support Devices the same way).
EVAL_LABELS: tuple[str, ...] = tuple(
    label_column(n) for n in CHEXPERT_LABELS if n not in ("No Finding", "Pleural Other", "Support Devices")
)
