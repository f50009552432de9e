"""DejaVu router: history captured into the store, one safetensors file reused, honest held-out
recall, the dejavu method reading it, and the train-router command (real default model, small
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
    try:
        assert router.history_runs(lm, store) == []
        seen = []
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


def test_recall_and_precision_are_stored_and_beat_random(trained):
    store, report, _ = trained
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
