"""Neuron atlas (issue 15) on the real default model and a tiny corpus: the statistics against an
independent computation from the hooks, resume after a build stopped midway, the query and
search answers, the command line's JSON contract, and every bad input refused with no partial
atlas left behind."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from moyu_core import hooks, masks, models
from moyu_core.__main__ import main
from moyu_core.analysis import top_mask
from moyu_core.atlas import REPRODUCIBLE_MKL, build, collect, corpus, shards
from moyu_core.atlas.diff import neuron_differences
from moyu_core.atlas.query import open_atlas
from moyu_core.errors import MoyuError
from moyu_core.methods import make
from moyu_core.preparation import prepare

# the build and the reference below must round alike: MKL told before this session's first product
os.environ.setdefault("MKL_CBWR", REPRODUCIBLE_MKL)

CORPUS = """The cat sat on the mat because the mat was warm.

Python lists are mutable sequences; tuples are not.
   \t
Seven red apples fell into the river and floated away.

<b>bold</b> & "quoted" <script>alert(1)</script> text.
"""
TOP_K, CHUNK, EVERY = 5, 10, 2   # EVERY: the methods' choices on pieces 0, 2, 4...
BUILD_ARGS = ["--top-k", str(TOP_K), "--chunk-tokens", str(CHUNK), "--method-every", str(EVERY)]


def cli(capsys, *argv) -> tuple[int, dict | None, str]:
    """(exit code, the last stdout line as JSON or None, stderr) of `python -m moyu_core ...`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        return code, json.loads(last), err
    except ValueError:
        return code, None, err


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(CORPUS)
    return path


@pytest.fixture(scope="module")
def built(lm, corpus_file, tmp_path_factory):
    """One atlas built through the command line (--json), and what it printed."""
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["atlas", "build", "--corpus", str(corpus_file), "--out", str(out), *BUILD_ARGS, "--json"])
    assert code == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1])


def tables(folder) -> dict:
    """The merged tables of an atlas as plain Python (metadata left out)."""
    return {t: pq.read_table(folder / f"{t}.parquet").to_pydict() for t in (*shards.CHUNK_TABLES, "vocab")}


@pytest.fixture(scope="module")
def reference(lm, corpus_file):
    """The statistics computed independently: z of each piece from `hooks.capture_mlp_io` (same
    SDPA forward as the build), masks from `masks.keep_masks_from`, numpy for the rest."""
    docs = corpus.documents(corpus_file.read_text())
    pieces = [p for c in corpus.plan(lm, docs, chunk_tokens=CHUNK) for p in c.pieces]
    L, D = lm.n_layers, lm.d_ff
    names = collect.method_names()
    ready = {}
    for name in names:
        try:
            ready[name] = make(name, keep=collect.KEEP)
            prepare(lm, ready[name])
        except MoyuError:
            ready.pop(name)
    ref = {k: np.zeros((L, D), np.int64) for k in ("n", "top10", "stay", "prev")}
    ref |= {"sum_abs": np.zeros((L, D)), "max_abs": np.zeros((L, D), np.float32),
            "hist": np.zeros((L, D, shards.N_BINS), np.int64), "kept": {m: np.zeros((L, D), np.int64) for m in ready},
            "kept_n": 0}
    values, where = [], []   # every measured z (L, D) and its (doc, pos)
    assert [p.ordinal for p in pieces] == list(range(len(pieces)))
    for p in pieces:
        ids = list(p.ids)
        with models.fused_attention(lm):
            _, z = hooks.capture_mlp_io(lm, ids, list(range(L)))          # (L, T, D)
            inputs = masks.method_inputs(lm, ids)
        zm = z[:, 1:]
        for i in range(L):
            m = top_mask(zm[i])
            ref["top10"][i] += m.sum(0)
            ref["stay"][i] += (m[:-1] & m[1:]).sum(0)
            ref["prev"][i] += m[:-1].sum(0)
            bins = np.searchsorted(shards.HIST_EDGES, zm[i].astype(np.float64), side="right")   # (T-1, D)
            np.add.at(ref["hist"][i], (np.broadcast_to(np.arange(D), bins.shape), bins), 1)
        ref["n"] += zm.shape[1]
        ref["sum_abs"] += np.abs(zm).astype(np.float64).sum(1)
        ref["max_abs"] = np.maximum(ref["max_abs"], np.abs(zm).max(1))
        for name, method in ready.items() if p.ordinal % EVERY == 0 else ():
            k = masks.keep_masks_from(lm, method, layer_z=lambda i: z[i], inputs=inputs)   # (L, T, D)
            ref["kept"][name] += k[:, 1:].sum(1)
        ref["kept_n"] += zm.shape[1] * (p.ordinal % EVERY == 0)
        values.append(zm.transpose(1, 0, 2))
        where += [(p.doc, p.doc_pos(q)) for q in range(1, len(ids))]
    ref["values"] = np.concatenate(values)     # (N, L, D)
    ref["where"] = where
    return ref


def test_plan_cuts_documents_into_512_token_pieces_behind_bos(lm):
    long_doc = " ".join(["word"] * 700)
    chunks = corpus.plan(lm, ["short one", long_doc], chunk_tokens=10**6)
    sizes = [len(p.ids) for c in chunks for p in c.pieces]
    assert sizes[1] == 512 and sum(sizes[1:]) == len(lm.tokenizer(long_doc, add_special_tokens=False)["input_ids"])
    assert [p.start for p in chunks[0].pieces] == [0, 0, 512]

    class WithBos:   # a model whose tokenizer starts with BOS: 511 text tokens per piece
        tokenizer, bos_ids = lm.tokenizer, [7]
    p = corpus.plan(WithBos, [long_doc], chunk_tokens=10**6)[0].pieces
    assert [len(x.ids) for x in p][0] == 512 and p[0].ids[0] == 7 and p[1].start == 511
    assert p[1].doc_pos(1) == 511   # position 0 is the BOS; position 1 the 512th text token
    assert corpus.plan(lm, ["a b c d e"], max_tokens=3)[0].tokens == 3


def test_documents_split_at_blank_lines():
    assert corpus.documents("a\r\n\r\nb\n  \t\nc\nd\x07\n\n\n") == ["a", "b", "c\nd"]


def test_build_json_contract_and_manifest(built):
    out, res = built
    assert res["atlas"] == str(out) and res["tokens"] > 0 and res["shards"] >= 3 and res["seconds"] > 0
    assert res["complete"] is True
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["fingerprint"] and m["settings"]["top_k"] == TOP_K
    assert len(m["chunks"]) == m["plan"]["chunks"] == res["shards"]
    assert set(m["methods"]) >= {"oracle", "tda", "cats", "cett", "griffin", "moe", "static"}
    assert "dense" not in m["methods"]
    assert "dejavu" in m["methods"] or "dejavu" in m["skipped_methods"]
    assert not list(out.glob("chunk-*")), "chunk shards are merged and removed"


def test_statistics_equal_an_independent_computation(built, reference, lm):
    out, _ = built
    got = tables(out)
    L, D = lm.n_layers, lm.d_ff
    st = got["stats"]
    for key in ("n", "top10", "stay", "prev"):
        assert np.array_equal(np.array(st[key]).reshape(L, D), reference[key]), key
    np.testing.assert_allclose(np.array(st["sum_abs"]).reshape(L, D), reference["sum_abs"], rtol=1e-5)
    assert np.array_equal(np.array(st["max_abs"], np.float32).reshape(L, D), reference["max_abs"])
    hist = np.array(st["hist"]).reshape(L, D, -1)
    assert hist.sum(-1).tolist() == reference["n"].tolist()
    assert np.array_equal(hist, reference["hist"])
    kept = got["kept"]
    for name, counts in reference["kept"].items():
        mine = np.array([k for k, m in zip(kept["kept"], kept["method"]) if m == name]).reshape(L, D)
        assert np.array_equal(mine, counts), name
    assert 0 < reference["kept_n"] < reference["n"][0, 0], "the test corpus samples some pieces, not all"
    assert set(kept["n"]) == {reference["kept_n"]}


def test_neuron_dashboard_matches_reference(built, reference, lm):
    out, _ = built
    atlas = open_atlas(out)
    vals, where = reference["values"], reference["where"]
    for layer, neuron in [(0, 0), (3, 17), (lm.n_layers - 1, lm.d_ff - 1), (14, 700)]:
        d = atlas.neuron(layer, neuron)
        col = vals[:, layer, neuron]
        order = sorted(range(len(col)), key=lambda j: (-col[j], where[j]))[:TOP_K]
        assert [(t["doc"], t["pos"]) for t in d["top"]] == [where[j] for j in order]
        assert [t["value"] for t in d["top"]] == pytest.approx([float(col[j]) for j in order], abs=0)
        assert d["top"] == sorted(d["top"], key=lambda t: -t["value"])
        n = reference["n"][layer, neuron]
        assert d["tokens"] == n
        assert d["frequency"] == pytest.approx(reference["top10"][layer, neuron] / n)
        prev = reference["prev"][layer, neuron]
        if prev:
            assert d["inertia"] == pytest.approx(reference["stay"][layer, neuron] / prev)
        assert d["mean_abs"] == pytest.approx(np.abs(col).mean(), rel=1e-5)
        assert d["methods_tokens"] == reference["kept_n"]
        assert d["methods"]["oracle"] == pytest.approx(reference["kept"]["oracle"][layer, neuron] / reference["kept_n"])
        assert sum(d["histogram"]["counts"]) == n
        top = d["top"][0]
        assert top["context"] == top["before"] + top["token"] + top["after"] and top["token"] in top["context"]


def test_contexts_are_the_corpus_tokens(built, lm):
    atlas = open_atlas(built[0])
    d = atlas.neuron(5, 5)
    docs = corpus.documents(CORPUS)
    for t in d["top"]:
        ids = lm.tokenizer(docs[t["doc"]], add_special_tokens=False)["input_ids"]
        lo, hi = max(0, t["pos"] - 8), t["pos"] + 9
        assert t["context"] == "".join(lm.pieces(ids[lo:hi]))
        assert t["token"] == lm.pieces([ids[t["pos"]]])[0]


def test_vocabulary_effect_is_the_down_column_through_the_norm_and_head(built, lm):
    d = open_atlas(built[0]).neuron(3, 17)
    w = lm.mlp_weights(3).down[:, 17] * lm.body.norm.weight.detach().float()
    logits = w @ lm.model.get_output_embeddings().weight.detach().float().T
    assert d["promoted"][0]["token_id"] == int(logits.argmax())
    assert d["suppressed"][0]["token_id"] == int(logits.argmin())
    assert d["promoted"][0]["value"] == pytest.approx(float(logits.max()), rel=1e-3)
    assert len(d["promoted"]) == len(d["suppressed"]) == 10


def test_search_by_token_promoted_token_frequency_and_method(built):
    atlas = open_atlas(built[0])
    d = atlas.neuron(2, 3)
    tok = d["top"][0]["token"]
    hits = atlas.search(token=tok, layer=2, limit=5000)
    assert any(r["neuron"] == 3 for r in hits) and all(r["hits"] >= 1 for r in hits)
    assert hits == sorted(hits, key=lambda r: -r["hits"])
    promoted = d["promoted"][0]["token"]
    rows = atlas.search(promotes=promoted, layer=2, limit=5000)
    assert any(r["neuron"] == 3 and r["promoted_rank"] == 0 for r in rows)
    rows = atlas.search(min_frequency=0.5, limit=50)
    assert rows and all(r["frequency"] >= 0.5 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["frequency"])
    rows = atlas.search(method="static", limit=10)
    assert rows[0]["disagreement"] == pytest.approx(abs(rows[0]["keep_rate"] - rows[0]["oracle_rate"]))
    assert rows[0]["disagreement"] >= rows[-1]["disagreement"]
    one = atlas.neuron(rows[0]["layer"], rows[0]["neuron"])
    assert (rows[0]["keep_rate"], rows[0]["oracle_rate"]) == pytest.approx((one["methods"]["static"],
                                                                            one["methods"]["oracle"]))
    assert rows[0]["frequency"] == pytest.approx(one["frequency"]) and rows[0]["tokens"] == one["tokens"]


def test_a_build_stopped_midway_resumes_to_the_clean_result(lm, corpus_file, built, tmp_path):
    out = tmp_path / "atlas"

    class Stop(Exception):
        pass

    def stop_after_first(index):
        raise Stop

    with pytest.raises(Stop):
        build.build(lm, str(corpus_file), out, top_k=TOP_K, chunk_tokens=CHUNK, method_every=EVERY,
                    on_chunk=stop_after_first)
    m = json.loads((out / "manifest.json").read_text())
    assert not m["complete"] and len(m["chunks"]) == 1
    with pytest.raises(MoyuError, match=r"incomplete: 1 of \d+ chunks"):
        open_atlas(out)
    partial = open_atlas(out, allow_partial=True).neuron(3, 17)
    assert partial["complete"] is False and 0 < partial["tokens"] < open_atlas(built[0]).neuron(3, 17)["tokens"]
    rows = open_atlas(out, allow_partial=True).search(method="tda", layer=3, limit=5000)
    row = next(r for r in rows if r["neuron"] == 17)
    assert row["tokens"] == partial["tokens"] and row["keep_rate"] == pytest.approx(partial["methods"]["tda"])
    (out / ".stats.parquet.999.tmp").write_bytes(b"half-written")   # what a kill mid-write leaves
    res = build.build(lm, str(corpus_file), out, top_k=TOP_K, chunk_tokens=CHUNK, method_every=EVERY)
    assert res["resumed_chunks"] == 1
    assert tables(out) == tables(built[0])
    assert not list(out.glob(".*.tmp"))
    again = build.build(lm, str(corpus_file), out, top_k=TOP_K, chunk_tokens=CHUNK, method_every=EVERY)
    assert again["resumed_chunks"] == res["shards"]   # complete: nothing to do


def test_merge_is_exact_whatever_the_chunking(lm, corpus_file, built, tmp_path):
    one = tmp_path / "one"
    build.build(lm, str(corpus_file), one, top_k=TOP_K, chunk_tokens=10**6, method_every=EVERY)
    a, b = tables(one), tables(built[0])
    for t in ("kept", "top", "tokens", "vocab"):
        assert a[t] == b[t], t
    for col in ("n", "top10", "stay", "prev", "max_abs", "hist"):
        assert a["stats"][col] == b["stats"][col], col
    np.testing.assert_allclose(a["stats"]["sum_abs"], b["stats"]["sum_abs"], rtol=1e-12)


# ---- bad input: one clear line, no partial atlas ---------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, "corpus not found"), (b"", "is empty"), (b"  \n\n \n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "looks binary"), (b"caf\xe9 latin-1", "not UTF-8")])
def test_bad_corpus_is_refused_before_anything_is_written(lm, tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MoyuError, match=message):
        build.build(lm, str(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw, message", [
    ({"top_k": 0}, "--top-k must be between"), ({"top_k": 101}, "--top-k must be between"),
    ({"max_tokens": 1}, "--max-tokens must be between"), ({"max_tokens": 10**11}, "--max-tokens must be"),
    ({"chunk_tokens": 0}, "--chunk-tokens must be"), ({"workers": 2}, "--workers needs --ray"),
    ({"method_every": 0}, "--method-every must be between"),
    ({"methods": ["nope"]}, "unknown method")])
def test_bad_settings_are_refused(lm, corpus_file, tmp_path, kw, message):
    with pytest.raises(MoyuError, match=message):
        build.build(lm, str(corpus_file), tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_folder_of_another_model_or_settings_is_not_touched(lm, corpus_file, built, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(built[0], out)
    m = json.loads((out / "manifest.json").read_text())
    m["fingerprint"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(m))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(MoyuError, match="another model"):
        build.build(lm, str(corpus_file), out, top_k=TOP_K, chunk_tokens=CHUNK)
    with pytest.raises(MoyuError, match="other settings"):
        build.build(lm, str(corpus_file), built[0], top_k=TOP_K + 1, chunk_tokens=CHUNK)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MoyuError, match="not an atlas folder"):
        build.build(lm, str(corpus_file), tmp_path / "other")


def test_corrupt_or_foreign_shards_are_refused(built, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(built[0], out)
    top = out / "top.parquet"
    top.write_bytes(b"\0" * top.stat().st_size)          # same size: the reader must notice
    with pytest.raises(MoyuError, match="corrupt"):
        open_atlas(out).neuron(1, 1)
    top.write_bytes(b"garbage")
    with pytest.raises(MoyuError, match="size differs"):
        open_atlas(out).neuron(1, 1)
    shutil.copy(built[0] / "top.parquet", top)
    stats = out / "stats.parquet"                       # a shard written for another model
    t = pq.read_table(stats)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"moyu_fingerprint": b"f" * 64}), stats)
    m = json.loads((out / "manifest.json").read_text())
    m["final"]["stats"]["bytes"] = stats.stat().st_size
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MoyuError, match="from another model"):
        open_atlas(out).neuron(1, 1)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(MoyuError, match="damaged"):
        open_atlas(out)


def test_a_manifest_cannot_point_outside_its_folder(built, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(built[0], out)
    m = json.loads((out / "manifest.json").read_text())
    m["final"]["stats"]["file"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MoyuError, match="not a plain Parquet file name"):
        open_atlas(out)


def test_an_atlas_of_an_older_format_is_refused_and_left_alone(lm, corpus_file, built, tmp_path):
    out = tmp_path / "atlas"
    shutil.copytree(built[0], out)
    m = json.loads((out / "manifest.json").read_text())
    m["version"] = shards.VERSION - 1   # version 1 had no sampled-token count in its kept table
    (out / "manifest.json").write_text(json.dumps(m))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    with pytest.raises(MoyuError, match=f"atlas version {shards.VERSION - 1}; this moyu reads version "
                                        f"{shards.VERSION}: build the atlas again into a new folder"):
        open_atlas(out)
    with pytest.raises(MoyuError, match="build the atlas again"):
        build.build(lm, str(corpus_file), out, top_k=TOP_K, chunk_tokens=CHUNK, method_every=EVERY)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before


def test_cli_neuron_json_and_one_line_errors(built, capsys, tmp_path):
    out = str(built[0])
    code, d, _ = cli(capsys, "atlas", "neuron", out, "3", "17", "--json")
    assert code == 0 and d["layer"] == 3 and d["neuron"] == 17
    assert {"top", "frequency", "inertia", "methods", "histogram", "promoted", "suppressed"} <= set(d)
    assert [t["value"] for t in d["top"]] == sorted((t["value"] for t in d["top"]), reverse=True)
    assert set(d["top"][0]) >= {"value", "doc", "pos", "token", "context"}
    code, d, _ = cli(capsys, "atlas", "search", out, "--min-frequency", "0.3", "--limit", "3", "--json")
    assert code == 0 and len(d["neurons"]) == 3
    for argv, message in [(["atlas", "neuron", out, "30", "0"], "layer 30 is out of range"),
                          (["atlas", "neuron", out, "0", "1536"], "neuron 1536 is out of range"),
                          (["atlas", "neuron", str(tmp_path / "none"), "0", "0"], "no atlas at"),
                          (["atlas", "build", "--corpus", str(tmp_path / "missing.txt"), "--out",
                            str(tmp_path / "o")], "corpus not found"),
                          (["atlas", "build", "--corpus", "pydoc", "--out", str(tmp_path / "o"), "--top-k", "0"],
                           "--top-k must be")]:
        code, _, err = cli(capsys, *argv)
        assert code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "o").exists()


def test_neuron_differences_rank_by_absolute_difference():
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    zb[1:, 5] += 10
    rows = neuron_differences(lambda i: za, lambda i: zb, [0, 1], top=3)
    assert (rows[0]["layer"], rows[0]["neuron"]) in ((0, 5), (1, 5))
    assert rows[0]["difference"] == pytest.approx(abs(np.abs(za[1:, 5]).mean() - np.abs(zb[1:, 5]).mean()))
    assert [r["difference"] for r in rows] == sorted((r["difference"] for r in rows), reverse=True)
