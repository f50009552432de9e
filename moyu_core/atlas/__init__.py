"""Neuron atlas: corpus-scale statistics per layer and neuron (DESIGN.md, "Neuron atlas").

    corpus.py   documents, pieces of at most 512 tokens, chunks of pieces (the unit of work)
    collect.py  one chunk through the model with hooks -> partial aggregates (Arrow tables)
    vocab.py    each neuron's W_down column through the unembedding
    shards.py   Parquet shards, the manifest, resume checks, the exact merge (compaction)
    build.py    the build: in-process, or on Ray (ray_runner.py), one model per worker
    query.py    DuckDB over the shards: the atlas' only SQL
    diff.py     neurons whose activity differs most between two stored runs
"""

DEFAULT_TOP_K = 20   # top contexts kept per neuron
METHOD_EVERY = 8     # the methods' choices are counted on every 8th piece (collect.py: why)

# MKL's matrix products may round differently with the memory alignment of their inputs and the
# thread count unless MKL_CBWR says otherwise (read before a process's first product): with it, a
# Ray worker's z equals an in-process build's bit for bit (`ray_runner.worker_env`, the CLI)
REPRODUCIBLE_MKL = "AUTO,STRICT"
