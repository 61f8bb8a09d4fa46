"""Text stage: event texts -> retrieval-augmented texts -> local encoder -> deduplicated embedding store.

One module per workflow rule: `knowledge.build_knowledge`, `index.build_rag_index`,
`embed.embed_events`; the training reader is
`ehrxdiff_core.text.store.EmbeddingReader`. Per-text numeric features (values, flags) beside the
embeddings: `ehrxdiff_core.text.numeric`.
"""
