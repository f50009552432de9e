"""The atlas built on a real local Ray cluster of 2 workers (one model and one torch thread each)
equals the in-process build (the command line, 2 threads), table for table. Ray is the optional
extra `.[ray]`, which the README's test command installs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

from moyu_core.atlas import build, shards  # noqa: E402
from moyu_core.errors import MoyuError  # noqa: E402

CORPUS = """Rivers carry water from the hills down to the sea.

A function returns a value; a generator yields many.

Bright stars shine over the quiet harbour at night.

Numbers like seven, eleven and thirteen are prime.
"""
SETTINGS = ["--top-k", "4", "--chunk-tokens", "8", "--method-every", "3"]


def _tables(folder) -> dict:
    return {t: pq.read_table(folder / f"{t}.parquet").to_pydict() for t in (*shards.CHUNK_TABLES, "vocab")}


def test_ray_build_with_two_workers_equals_the_in_process_build(lm, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    # the in-process build in a process of its own: as `python -m moyu_core` runs, MKL set up
    # reproducible before its first product (this test process may have run products already)
    done = subprocess.run([sys.executable, "-m", "moyu_core", "atlas", "build", "--corpus", str(corpus),
                           "--out", str(tmp_path / "here"), *SETTINGS, "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    here = json.loads(done.stdout.strip().splitlines()[-1])
    ray = build.build(lm, str(corpus), tmp_path / "ray", ray="local", workers=2, top_k=4, chunk_tokens=8,
                      method_every=3)
    assert ray["shards"] == here["shards"] >= 4 and ray["tokens"] == here["tokens"]
    assert _tables(tmp_path / "ray") == _tables(tmp_path / "here")


def test_a_ray_address_where_nothing_answers_is_one_clear_error(lm, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    with pytest.raises(MoyuError, match="could not start or join Ray at '127.0.0.1:1'"):
        build.build(lm, str(corpus), tmp_path / "out", ray="127.0.0.1:1", workers=1, top_k=4)
    assert not (tmp_path / "out").exists()
