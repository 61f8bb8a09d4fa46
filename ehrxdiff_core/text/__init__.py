"""Text stage: event texts -> retrieval-augmented texts -> local encoder -> deduplicated embedding store.

Entry points for the workflow live in `ehrxdiff_core.text.stages`; the training reader is
`ehrxdiff_core.text.store.EmbeddingReader`. Per-text numeric features (values, flags) beside the
embeddings: `ehrxdiff_core.text.numeric`.
"""
