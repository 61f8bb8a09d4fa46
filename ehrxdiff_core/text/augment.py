"""Retrieval augmentation: each unique event text + its item's own snippets + nearest snippets + an abnormality flag.

Sparse event strings ("chartevents itemid Respiratory Rate value 28 ...") say nothing about what the item is
or whether the value is worrying; the glossary entry of the item's own label and a range flag add that.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ehrxdiff_core.config import RagConfig
from ehrxdiff_core.data.tables import EVENT_TABLES, serialized_column_names
from ehrxdiff_core.text.glossary import MEASUREMENT_KINDS

log = logging.getLogger(__name__)

# What each event table's text holds (serialized columns, item label, number and unit) is its entry in the
# registry of ehrxdiff_core/data/tables.py: the parser reads texts the way the events stage writes them.
_NORM_RE = re.compile(r"[^a-z0-9%]+")


def normalise_name(s: str) -> str:
    """Lower-case words separated by single spaces: 'MetRONIDAZOLE (FLagyl)' -> 'metronidazole flagyl'."""
    return _NORM_RE.sub(" ", str(s).lower()).strip()


def parse_event(text: str) -> tuple[str, dict[str, str]]:
    """Split a serialized event into (table, {column: value}); columns must appear in the table's order."""
    tokens = text.split()
    if not tokens:
        return "", {}
    table, rest = tokens[0], tokens[1:]
    entry = EVENT_TABLES.get(table)
    columns = [c.name for c in entry.serialized] if entry is not None else serialized_column_names()
    pos = {c: i for i, c in enumerate(columns)}
    fields: dict[str, list[str]] = {}
    current, current_pos = None, -1
    for tok in rest:
        p = pos.get(tok)
        if p is not None and (p > current_pos or entry is None) and tok not in fields:
            current, current_pos = tok, p
            fields[tok] = []
        elif current is not None:
            fields[current].append(tok)
    return table, {k: " ".join(v) for k, v in fields.items()}


def _number(s: str | None) -> float | None:
    if s is None:
        return None
    try:
        x = float(s.replace(" ", ""))
    except ValueError:
        return None
    return x if np.isfinite(x) else None


def abnormality_flag(value: float | None, low: float | None, high: float | None) -> str | None:
    """'low' if value < low, 'high' if value > high, else 'normal' (both edges inclusive); None without a range."""
    if value is None or (low is None and high is None):
        return None
    if low is not None and value < low:
        return "low"
    if high is not None and value > high:
        return "high"
    return "normal"


def _unit(u) -> str:
    return "" if u is None or (isinstance(u, float) and np.isnan(u)) else re.sub(r"[\s.]+", "", str(u).lower())


def _opt(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


@dataclass
class EventItem:
    """What an event is about and its number, as parsed from its text (and code).

    `quantity` is any number the event carries (measurement, dose, amount, duration) with its `unit`; `value`
    is that number only for measurements, the ones a reference range applies to.
    """

    table: str
    label: str | None
    value: float | None = None
    unit: str | None = None
    ref_low: float | None = None
    ref_high: float | None = None
    fields: dict[str, str] = field(default_factory=dict)
    quantity: float | None = None


def event_item(text: str, source: str | None = None, code: str | None = None) -> EventItem:
    table, f = parse_event(text)
    table = source or table
    entry = EVENT_TABLES.get(table)
    label = quantity = unit = None
    if entry is not None:
        # what the event is about: its code columns, as the text holds them (the dictionary key as its label)
        label = next((f[c] for c in entry.code if f.get(c)), None)
        if entry.quantity is not None:
            number_col, unit_col = entry.quantity
            quantity, unit = _number(f.get(number_col)), f.get(unit_col)
    value = quantity if entry is not None and entry.measurement else None
    return EventItem(
        table=table,
        label=label or None,
        value=value,
        unit=unit,
        ref_low=_number(f.get("ref_range_lower")),
        ref_high=_number(f.get("ref_range_upper")),
        fields=f,
        quantity=quantity,
    )


class KnowledgeLookup:
    """Lexical access to the corpus: an item's dictionary row by itemid or label, its glossary entry by name."""

    def __init__(self, knowledge: pd.DataFrame):
        self.k = knowledge.reset_index(drop=True)
        self.by_ref = dict(zip(self.k["ref"], self.k.index))
        self.dict_by_key: dict[tuple[str, str], int] = {}
        self.gloss_names: dict[str, int] = {}
        for i, r in self.k.iterrows():
            if r["source"] == "glossary":
                for name in [r["key"], *list(r["aliases"] if r["aliases"] is not None else [])]:
                    self.gloss_names.setdefault(normalise_name(name), i)
            else:
                self.dict_by_key.setdefault((r["source"], normalise_name(r["key"])), i)
        # longest names first, so 'piperacillin tazobactam' beats 'piperacillin'
        self._gloss_sorted = sorted(self.gloss_names.items(), key=lambda kv: -len(kv[0]))
        self._gloss_cache: dict[str, int | None] = {}

    def glossary_for(self, label: str) -> int | None:
        """Exact name match, else the longest glossary name contained in the label as whole words."""
        norm = normalise_name(label)
        if norm in self._gloss_cache:
            return self._gloss_cache[norm]
        hit = self.gloss_names.get(norm)
        if hit is None and norm:
            padded = f" {norm} "
            for name, i in self._gloss_sorted:
                if len(name) >= 3 and f" {name} " in padded:
                    hit = i
                    break
        self._gloss_cache[norm] = hit
        return hit

    def reference_range(self, item: EventItem, dict_row: int | None, gloss_row: int | None):
        """The event's own lab range, else the d_items normal range, else the glossary's; units must agree."""
        k = self.k
        candidates = [(item.ref_low, item.ref_high, item.unit)]
        if dict_row is not None:
            candidates.append((_opt(k.at[dict_row, "low"]), _opt(k.at[dict_row, "high"]), k.at[dict_row, "unit"]))
        if gloss_row is not None and k.at[gloss_row, "kind"] in MEASUREMENT_KINDS:
            candidates.append((_opt(k.at[gloss_row, "low"]), _opt(k.at[gloss_row, "high"]), k.at[gloss_row, "unit"]))
        for low, high, unit in candidates:
            if low is None and high is None:
                continue
            if _unit(unit) and _unit(item.unit) and _unit(unit) != _unit(item.unit):
                continue
            return low, high, unit
        return None, None, None

    def resolve(self, text: str, source: str | None = None, code: str | None = None):
        """(parsed item, its glossary row, its dictionary row): everything retrieval and range flags start from."""
        item = event_item(text, source, code)
        gloss = self.glossary_for(item.label) if item.label else None
        return item, gloss, self.dictionary_for(item.table, item.label, code)

    def flag(self, item: EventItem, dict_row: int | None, gloss_row: int | None):
        """(flag, low, high, unit) of a measurement against its reference range; flag None without value or range."""
        if item.value is None:
            return None, None, None, None
        low, high, unit = self.reference_range(item, dict_row, gloss_row)
        return abnormality_flag(item.value, low, high), low, high, unit

    def dictionary_for(self, table: str, label: str | None, code: str | None) -> int | None:
        entry = EVENT_TABLES.get(table)
        if entry is None or entry.dictionary is None:
            return None
        dict_source = entry.dictionary.table
        if code is not None and str(code).strip().isdigit():
            hit = self.by_ref.get(f"{dict_source}:{int(str(code).strip())}")
            if hit is not None:
                return hit
        if label:
            return self.dict_by_key.get((dict_source, normalise_name(label)))
        return None


@dataclass
class Augmented:
    text: str
    snippet_ids: list[int]
    flag: str | None


class Augmenter:
    """Combines event texts with retrieved snippets and range flags, per `text.rag`."""

    def __init__(self, knowledge: pd.DataFrame, rag: RagConfig, encoder=None, index=None):
        self.rag = rag
        self.lookup = KnowledgeLookup(knowledge)
        self.encoder = encoder
        self.index = index
        try:
            rag.template.format(event="e", snippets="s", flag="f")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"text.rag.template: only {{event}}, {{snippets}} and {{flag}} may be used ({err!r})"
            ) from None
        if "{event}" not in rag.template:
            raise ValueError("text.rag.template must contain {event}")
        if rag.enabled and rag.top_k > 0 and (encoder is None or index is None):
            raise ValueError("text.rag.enabled with top_k > 0 needs an encoder and a FAISS index")

    def reference_range(self, item: EventItem, dict_row: int | None, gloss_row: int | None):
        """See `KnowledgeLookup.reference_range`."""
        return self.lookup.reference_range(item, dict_row, gloss_row)

    def _retrieve(self, queries: list[str], exclude: list[list[int]]) -> list[list[int]]:
        """FAISS top hits per query with score >= min_score, skipping snippets already chosen lexically."""
        uniq, inverse = np.unique(np.array(queries, dtype=object), return_inverse=True)
        q = self.encoder.encode(list(uniq), progress=False)
        k = min(self.rag.top_k + 4, self.index.ntotal)
        scores, ids = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        out = []
        for j, inv in enumerate(inverse):
            chosen = []
            for s, i in zip(scores[inv], ids[inv]):
                if i < 0 or s < self.rag.min_score or int(i) in exclude[j] or int(i) in chosen:
                    continue
                chosen.append(int(i))
            out.append(chosen)
        return out

    def augment(
        self, texts: list[str], sources: list[str] | None = None, codes: list[str] | None = None
    ) -> list[Augmented]:
        n = len(texts)
        sources = sources or [None] * n
        codes = codes or [None] * n
        k = self.lookup.k
        items, own = [], []
        for text, src, code in zip(texts, sources, codes):
            item, gloss, dict_row = self.lookup.resolve(text, src, code)
            items.append((item, gloss, dict_row))
            own.append([i for i in (gloss, dict_row) if i is not None])

        use_rag = self.rag.enabled and self.rag.top_k > 0
        chosen = [o[: self.rag.top_k] if use_rag else [] for o in own]
        need = [j for j in range(n) if use_rag and len(chosen[j]) < self.rag.top_k]
        if need:
            queries = [items[j][0].label or texts[j] for j in need]
            extra = self._retrieve(queries, [chosen[j] for j in need])
            for j, e in zip(need, extra):
                chosen[j] = chosen[j] + e[: self.rag.top_k - len(chosen[j])]

        out = []
        for j, text in enumerate(texts):
            item, gloss, dict_row = items[j]
            flag, flag_txt = None, ""
            if self.rag.abnormal_flag:
                flag, low, high, unit = self.lookup.flag(item, dict_row, gloss)
                if flag is not None:
                    rng = f"{'' if low is None else f'{low:g}'} to {'' if high is None else f'{high:g}'}".strip()
                    unit_txt = f" {unit}" if unit and not pd.isna(unit) else ""
                    flag_txt = f" | flag: {flag} (reference {rng}{unit_txt})"
            snippets = [k.at[i, "text"] for i in chosen[j]]
            if not snippets and not flag_txt:
                out.append(Augmented(text, [], None))
                continue
            aug = self.rag.template.format(event=text, snippets=" ; ".join(snippets) or "none", flag=flag_txt)
            out.append(Augmented(aug, chosen[j], flag))
        return out
