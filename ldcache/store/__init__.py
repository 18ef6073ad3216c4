"""The store: a Zarr v3 group of teacher logits and LD region rows (docs/store-format.md).

format (constants), attrs (the typed attribute model), codec (logit values), layout (blocks and
rows), filesystem (local or object storage), writer, chunks and reader, targets (what a reader
returns). Reading imports numpy, zarr and numcodecs only.
"""
