"""DejaVu router: history captured into the store, one safetensors file reused, ~5% of the MLP,
labels from float z, no overlap with the evaluation text, honest held-out recall with n and an
interval, the dejavu method reading it, and the train-router command (real default model, small
settings, a temporary router folder so the repo cache is never touched)."""
from __future__ import annotations

import json
import time

import pytest
import torch

SMALL = dict(rank=64, steps=30, min_tokens=512, heldout=2)


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("routers")


@pytest.fixture
def routers(router_dir, monkeypatch):
    monkeypatch.setenv("MOYU_ROUTER_DIR", str(router_dir))
    return router_dir


@pytest.fixture(scope="module")
def trained(lm, router_dir, tmp_path_factory):
    """One small router trained on an empty store (so history must be captured first)."""
    from moyu_core import router
    from moyu_core.store import Store

    mp = pytest.MonkeyPatch()
    mp.setenv("MOYU_ROUTER_DIR", str(router_dir))
    store = Store(tmp_path_factory.mktemp("db") / "router.duckdb")

    def no_stored_z(*a, **k):
        raise AssertionError("router labels must come from z recomputed in float, not the stored int8 z")

    try:
        assert router.history_runs(lm, store) == []
        seen = []
        with pytest.MonkeyPatch.context() as labels_from_float:
            labels_from_float.setattr(store, "activations", no_stored_z)
            report = router.train(lm, store, progress=lambda f, m: seen.append((f, m)), **SMALL)
        yield store, report, seen
    finally:
        store.close()
        mp.undo()


def test_history_is_captured_into_the_store_when_too_little(lm, trained):
    from moyu_core import router

    store, report, seen = trained
    hist = router.history_runs(lm, store)
    assert report["captured_runs"] == len(hist) >= 2
    assert sum(r["tokens"] for r in hist) >= SMALL["min_tokens"] == report["min_tokens"]
    assert report["tokens_trained"] >= SMALL["min_tokens"]
    # history is ordinary stored runs, disjoint from the evaluation corpus
    from pydoc_data.topics import topics
    text = store.run(hist[0]["run_id"]).text
    assert store.activations(hist[0]["run_id"], 0).shape == (hist[0]["tokens"], lm.d_ff)
    assert not any(text[:200] in t for t in topics.values())
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0


def test_router_is_about_five_percent_of_the_mlp_and_larger_ranks_are_refused(lm, trained, routers):
    from moyu_core import router
    from moyu_core.errors import MoyuError

    mlp = 3 * lm.d_model * lm.d_ff
    assert router.default_rank(lm) == 62                            # smollm2: 62 x (576 + 1536) = 4.9%
    assert 0.045 < router.size_share(lm, router.default_rank(lm)) <= 0.05
    _, report, _ = trained
    assert report["router_params"] == SMALL["rank"] * (lm.d_model + lm.d_ff) and report["mlp_params"] == mlp
    assert report["router_share"] == pytest.approx(report["router_params"] / mlp) and report["router_share"] <= 0.10
    assert "of the MLP" in router.report_text(report)
    with pytest.raises(MoyuError, match="at most 10%"):
        router.train(lm, trained[0], rank=200, steps=1, min_tokens=1)


def test_history_overlapping_the_evaluation_text_refuses_training(lm, tmp_path, monkeypatch):
    from moyu_core import router
    from moyu_core.corpora import pydoc_topics
    from moyu_core.errors import MoyuError
    from moyu_core.evaluate import corpus_ids, windows_of
    from moyu_core.runs import capture_run
    from moyu_core.store import Store

    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "routers"))
    store = Store(tmp_path / "leak.duckdb")
    try:
        leaked = lm.tokenizer.decode(windows_of(corpus_ids(lm), 12, 320)[3][:200])   # an evaluation window
        rid = capture_run(lm, store, leaked).run_id
        with pytest.raises(MoyuError, match=f"overlaps the evaluation text.*{rid}"):
            router.train(lm, store, rank=8, steps=1, min_tokens=64, heldout=2)
        assert not router.router_path(lm).exists()
        clean = capture_run(lm, store, "Colourless green ideas sleep furiously while the cat naps on a warm mat "
                                       "beside a quiet river in the late afternoon sun.").run_id
        assert router.check_no_overlap(lm, {clean: [t for t, _ in store.tokens(clean)]})["shared_ngrams"] == 0
        assert pydoc_topics()  # the reference the check uses
    finally:
        store.close()


def test_router_file_is_one_safetensors_and_second_train_reuses_it(lm, trained, routers):
    from safetensors import safe_open

    from moyu_core import router

    store, report, _ = trained
    path = router.router_path(lm)
    assert report["cached"] is False and report["path"] == str(path) and path.parent == routers
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert len(list(f.keys())) == 2 * lm.n_layers
        assert tuple(f.get_tensor("layers.0.w1").shape) == (SMALL["rank"], lm.model.config.hidden_size)
    assert int(meta["rank"]) == SMALL["rank"] and int(meta["steps"]) == SMALL["steps"]
    assert json.loads(meta["report"])["recall"] == pytest.approx(report["recall"])
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = router.train(lm, store, **SMALL)
    assert again["cached"] is True and time.perf_counter() - t0 < 5
    assert again["recall"] == report["recall"] and path.stat().st_mtime_ns == mtime
    loaded = router.load_router(lm)
    assert loaded is router.load_router(lm)  # cached in memory
    assert loaded.w1[0].dtype == torch.float32 and len(loaded.w2) == lm.n_layers
    assert meta["version"] == str(router.VERSION) == "2"


def test_a_router_of_an_older_version_is_not_loaded(lm, trained, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from moyu_core import router

    with safe_open(str(router.router_path(lm)), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "old"))
    (tmp_path / "old").mkdir()
    save_file(tensors, str(router.router_path(lm)), metadata={**meta, "version": "1"})
    assert router.load_router(lm) is None


def test_recall_and_precision_are_stored_and_beat_random(trained):
    store, report, _ = trained
    ci = report["recall_ci@0.5"]
    assert ci["n"] == SMALL["heldout"] == report["heldout"]["windows"] and ci["unit"] == "held-out windows"
    assert ci["lo"] <= report["recall@0.5"] <= ci["hi"] and ci["mean"] == pytest.approx(report["recall@0.5"])
    assert report["overlap_check"]["shared_ngrams"] == 0 and report["overlap_check"]["runs"] == report["history_runs"]
    for keep in (0.5, 0.25):
        for name in (f"recall@{keep}", f"precision@{keep}"):
            assert 0.0 <= report[name] <= 1.0
    assert 0 <= report["clf_recall"] <= 1 and 0 <= report["clf_precision"] <= 1
    # a random choice of half the neurons recalls 0.5 of the true top half (a quarter: 0.25)
    assert report["recall@0.5"] > 0.55
    assert report["recall@0.25"] > 0.3
    assert sum(row["recall@0.5"] > 0.5 for row in report["per_layer"]) >= 0.9 * len(report["per_layer"])
    stored = store.results("router")
    assert len(stored) == 1 and stored[0]["method"] == "dejavu"
    assert stored[0]["result"]["recall"] == pytest.approx(report["recall"])


def test_dejavu_keeps_router_top_k(lm, trained, routers):
    from moyu_core import router
    from moyu_core.methods import make
    from moyu_core.preparation import prepare

    T = 5
    x = torch.randn(T, lm.model.config.hidden_size)
    z = torch.randn(T, lm.d_ff)
    assert make("dejavu", keep=1.0).select(3, z, z, lm, x).all()
    m = prepare(lm, make("dejavu", keep=0.25)).select(3, z, z, lm, x)
    assert m.shape == (T, lm.d_ff) and (m.sum(1) == lm.d_ff // 4).all()
    top = router.load_router(lm).logits(3, x).topk(lm.d_ff // 4, dim=1).indices
    assert m.gather(1, top).all()


def test_dejavu_without_router_or_x_raises(lm, tmp_path, monkeypatch):
    from moyu_core.errors import MoyuError
    from moyu_core.methods import make
    from moyu_core.preparation import prepare

    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "empty"))
    x = torch.randn(3, lm.model.config.hidden_size)
    z = torch.randn(3, lm.d_ff)
    assert prepare(lm, make("dejavu", keep=1.0)).select(0, z, z, lm, x).all()  # keep 1.0 needs no router
    with pytest.raises(MoyuError, match="train-router"):
        prepare(lm, make("dejavu", keep=0.5))
    with pytest.raises(MoyuError, match="not prepared"):
        make("dejavu", keep=0.5).select(0, z, z, lm, x)
    with pytest.raises(MoyuError, match="MLP input"):
        make("dejavu", keep=0.5).select(0, z, z, lm)


def test_cli_train_router_json_reuses_the_router(trained, routers, capsys):
    from moyu_core.__main__ import main

    store, report, _ = trained
    args = ["train-router", "--db", str(store.path), "--rank", str(SMALL["rank"]), "--steps",
            str(SMALL["steps"]), "--min-tokens", str(SMALL["min_tokens"]), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["cached"] is True and out["path"] == report["path"]
    for k in ("recall", "precision", "seconds"):
        assert k in out
    assert main(["train-router", "--db", str(store.path), "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err


def test_dejavu_executed_decode_equals_masked(lm, trained, routers):
    """The gathered per-token path (router on x, then only the kept rows of gate/up/down) gives
    the tokens of the masked run; the eval quality protocol runs with the router too."""
    from moyu_core.decode import generate
    from moyu_core.evaluate import evaluate
    from moyu_core.methods import make

    m = make("dejavu", keep=0.5)
    a = generate(lm, "The history of the Roman empire begins", m, max_new_tokens=6, executed=True)
    b = generate(lm, "The history of the Roman empire begins", m, max_new_tokens=6, executed=False)
    assert (a["label"], b["label"]) == ("executed", "simulated") and a["tokens"] == b["tokens"]
    r = evaluate(lm, m, None, windows=1, prompt_len=32, gen_len=8)
    assert abs(r["sparsity"] - 0.5) < 0.01 and r["ppl_ratio"] > 0
