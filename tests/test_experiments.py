"""Experiments: inertia, heavy-hitter ablation, ReLU vs SwiGLU, applicability — end to end with
small settings, verdicts computed from the numbers, cache hits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moyu_core import hooks
from moyu_core.experiments import applicability, common, hh_ablation, inertia, stats
from moyu_core.experiments import relu_swiglu as rs
from moyu_core.methods import REGISTRY
from moyu_core.store import Store


# ---- verdicts flip with the numbers --------------------------------------------------------------

def test_verdict_greater_flips():
    a, b = np.array([0.5, 0.55, 0.6, 0.52]), np.array([0.3, 0.31, 0.33, 0.29])
    assert stats.verdict_greater("a>b", stats.diff_ci(a, b))["verdict"] == "supported"
    assert stats.verdict_greater("b>a", stats.diff_ci(b, a))["verdict"] == "contradicted"
    noise = np.array([0.3, 0.6, 0.31, 0.58])
    assert stats.verdict_greater("x", stats.diff_ci(noise, noise[::-1]))["verdict"] == "not supported"
    assert stats.verdict_equal("=", stats.diff_ci(noise, noise[::-1]))["verdict"] == "supported"
    assert stats.verdict_equal("=", stats.diff_ci(a, b))["verdict"] == "not supported"


def _per_text(sent_seq, rand_seq, sent_par, rand_par):
    rng = np.random.default_rng(0)
    mk = lambda m: {k: m + rng.normal(0, 0.005, 8) for k in inertia.METRICS}  # noqa: E731
    return {"sentence/sequential": mk(sent_seq), "random/sequential": mk(rand_seq),
            "sentence/parallel": mk(sent_par), "random/parallel": mk(rand_par)}


def test_inertia_verdicts_follow_synthetic_numbers():
    v = inertia.verdicts(_per_text(0.4, 0.5, 0.2, 0.2))
    assert v["sequential_strengthens"]["verdict"] == "supported"
    assert v["semantic_irrelevant"]["verdict"] == "supported"
    assert v["parallel_no_difference"]["verdict"] == "supported"
    v = inertia.verdicts(_per_text(0.4, 0.3, 0.6, 0.5))
    assert v["sequential_strengthens"]["verdict"] == "contradicted"
    assert v["semantic_irrelevant"]["verdict"] == "contradicted"
    assert v["parallel_no_difference"]["verdict"] == "not supported"


def test_ablation_and_router_verdicts_flip():
    big = {"pattern_overlap": np.array([0.5, 0.52, 0.49]), "griffin_jaccard": np.array([0.6, 0.62, 0.61]),
           "ppl_ratio_vs_clean_griffin": np.array([1.5, 1.6, 1.4])}
    small = {"pattern_overlap": np.array([0.9, 0.91, 0.92]), "griffin_jaccard": np.array([0.95, 0.96, 0.94]),
             "ppl_ratio_vs_clean_griffin": np.array([1.01, 0.99, 1.0])}
    v = hh_ablation.verdicts({"heavy": big, "control": small})
    assert {x["verdict"] for x in v.values()} == {"supported"}
    v = hh_ablation.verdicts({"heavy": small, "control": big})
    assert {x["verdict"] for x in v.values()} == {"contradicted"}
    layer = lambda r, z: {"recall": r, "exact_zero": z}  # noqa: E731
    res = {"tiny-relu": {"hidden_act": "relu", "per_layer": [layer(0.8, 0.5), layer(0.82, 0.6), layer(0.79, 0.55)]},
           "tiny-swiglu": {"hidden_act": "silu", "per_layer": [layer(0.5, 0.0), layer(0.52, 0.0), layer(0.48, 0.0)]}}
    p = rs.CompareParams()
    assert rs.verdicts(res, p)["limitation_1_router"]["verdict"] == "supported"
    res["tiny-relu"]["per_layer"] = [layer(0.3, 0.5), layer(0.31, 0.6), layer(0.29, 0.55)]
    assert rs.verdicts(res, p)["limitation_1_router"]["verdict"] == "contradicted"


def test_flocking_score_definition():
    z = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])  # rows normalised: [.6,.8,0], [0,0,1]
    np.testing.assert_allclose(common.flocking_score(z), [0.6, 0.8, 1.0], atol=1e-6)
    assert common.top_set(np.array([0.1, 0.9, 0.5, 0.2]), 0.5).tolist() == [False, True, True, False]


# ---- hooks ------------------------------------------------------------------------------------

def test_mask_key_attention_only_changes_later_tokens(tiny_lm):
    ids = [5, 17, 3, 42, 8, 11, 60, 2]
    clean = hooks.capture(tiny_lm, ids).z
    with hooks.mask_key_attention(tiny_lm, -1):  # no key blocked: identical to the clean run
        same = hooks.capture(tiny_lm, ids).z
    np.testing.assert_allclose(same, clean, atol=1e-5)
    with hooks.mask_key_attention(tiny_lm, 2):
        abl = hooks.capture(tiny_lm, ids).z
    np.testing.assert_allclose(abl[:, :3], clean[:, :3], atol=1e-5)
    assert np.abs(abl[:, 3:] - clean[:, 3:]).max() > 1e-4
    assert hooks.hook_count(tiny_lm.model) == 0


# ---- end to end on the real default model ------------------------------------------------------

def test_inertia_end_to_end_and_cache(lm, db):
    p = inertia.InertiaParams(n_texts=2, n_tokens=8, layers=(0, 15, 29))
    res = inertia.run(lm, db, p)
    assert res["cached"] is False
    for c in inertia.CONDITIONS:
        e = res[c]
        assert 0 < e["jaccard_top10"]["mean"] <= 1 and e["jaccard_top10"]["n"] == 2
        assert e["jaccard_top10"]["lo"] <= e["jaccard_top10"]["mean"] <= e["jaccard_top10"]["hi"]
        assert [r["layer"] for r in e["per_layer"]] == [0, 15, 29]
    assert set(res["verdicts"]) == {"sequential_strengthens", "semantic_irrelevant", "parallel_no_difference"}
    for v in res["verdicts"].values():
        assert v["verdict"] in ("supported", "not supported", "contradicted")
    json.dumps(res)
    again = inertia.run(lm, db, p)
    assert again["cached"] is True
    assert again["sentence/sequential"] == res["sentence/sequential"]


def test_hh_ablation_end_to_end_and_cache(lm, db):
    p = hh_ablation.AblationParams(n_texts=2, prompt_tokens=16, continuation_tokens=4, n_heavy=2)
    res = hh_ablation.run(lm, db, p)
    assert res["cached"] is False
    for t in res["per_text"]:
        assert t["target"] == min(t["heavy_hitters"]) and t["control"] not in t["heavy_hitters"]
        assert 0 <= t["heavy"]["pattern_overlap"] <= 1 and 0 <= t["control"]["griffin_jaccard"] <= 1
        assert t["ppl_dense"] > 1 and t["heavy"]["ppl_griffin"] > 1
    assert set(res["verdicts"]) == {"pattern_changes", "griffin_neurons_change", "griffin_quality_changes"}
    assert hh_ablation.run(lm, db, p)["cached"] is True
    assert hooks.hook_count(lm.model) == 0


def test_relu_swiglu_tiny_training_and_compare(lm, db, tmp_path, monkeypatch):
    monkeypatch.setattr(rs, "TRAINED_DIR", tmp_path / "trained")
    tp = rs.TrainParams(hidden=32, layers=2, heads=2, kv_heads=1, d_ff=64, seq_len=32, batch=2, steps=3,
                        suffix="-pytest")
    infos = rs.train_pair(tp)
    assert set(infos) == {"tiny-relu-pytest", "tiny-swiglu-pytest"}
    assert infos["tiny-relu-pytest"]["params"] == infos["tiny-swiglu-pytest"]["params"]
    assert infos["tiny-relu-pytest"]["steps"] == infos["tiny-swiglu-pytest"]["steps"] == 3
    assert (tmp_path / "trained" / "tiny-relu-pytest" / "model.safetensors").exists()
    assert rs.train_pair(tp)["tiny-relu-pytest"]["cached"] is True
    cp = rs.CompareParams(models=("tiny-relu-pytest", "tiny-swiglu-pytest", "no-such-model"), train_tokens=96,
                          test_tokens=48, n_layers=2, router_steps=5, router_rank=16)
    res = rs.compare(cp, db)
    relu, silu = res["models"]["tiny-relu-pytest"], res["models"]["tiny-swiglu-pytest"]
    assert relu["hidden_act"] == "relu" and relu["exact_zero"] > 0.05 and silu["exact_zero"] < 0.01
    assert 0 <= relu["recall"] <= 1 and "no-such-model" in res["skipped"]
    assert res["verdicts"]["limitation_1_router"]["verdict"] in ("supported", "not supported", "contradicted")
    assert rs.compare(cp, db)["models"]["tiny-relu-pytest"]["cached"] is True


def test_cli_inertia_json_and_applicability(tmp_path, capsys, monkeypatch):
    from moyu_core.__main__ import main

    db = str(tmp_path / "cli.duckdb")
    assert main(["inertia", "--db", db, "--texts", "2", "--tokens", "6", "--layers", "0,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for c in inertia.CONDITIONS:
        assert "jaccard_top10" in out[c] and len(out[c]["per_layer"]) == 2
    assert "verdicts" in out
    assert main(["inertia", "--db", db, "--texts", "1"]) == 2  # user error, one line
    assert "at least 2 texts" in capsys.readouterr().err
    # applicability end to end, small: every method on the real model; with no router (empty
    # router folder, training off) dejavu's row is a clear error, the others have figures
    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "routers"))
    p = applicability.ApplicabilityParams(models=("smollm2-135m", "no-such-model"), windows=1,
                                          prompt_len=32, gen_len=8, train_router=False)
    store = Store(db)
    res = applicability.run(store, p)
    rows = {r["method"]: r for r in res["table"]}
    assert set(rows) == set(REGISTRY) and "no-such-model" in res["model_errors"]
    assert "train-router" in rows["dejavu"]["error"]
    assert abs(rows["dense"]["ppl_ratio"] - 1) < 1e-6 and rows["oracle"]["sparsity"] > 0.4
    assert applicability.run(store, p)["cached"] is True
    store.close()
