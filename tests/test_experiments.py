"""Experiments: statistics that can fail (known effect, null, equivalence, small-n coverage), the
parallel context rule, and inertia, heavy-hitter ablation, ReLU vs SwiGLU, applicability end to
end with small settings and cache hits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from moyu_core import hooks, runs
from moyu_core.experiments import applicability, common, hh_ablation, inertia, stats
from moyu_core.experiments import relu_swiglu as rs
from moyu_core.methods import REGISTRY
from moyu_core.store import Store, run_id_for


# ---- statistics -----------------------------------------------------------------------------------

def test_t_quantiles_match_tables():
    for df, q, want in [(1, 0.975, 12.7062), (2, 0.975, 4.3027), (4, 0.975, 2.7764), (11, 0.975, 2.2010),
                        (29, 0.975, 2.0452), (29, 0.95, 1.6991), (1000, 0.975, 1.9623)]:
        assert stats.t_ppf(q, df) == pytest.approx(want, abs=1e-4)
    assert stats.t_cdf(0.0, 7) == pytest.approx(0.5)
    assert stats.t_ppf(0.025, 5) == pytest.approx(-stats.t_ppf(0.975, 5))


def test_t_interval_covers_at_small_n():
    """n = 5: the t interval covers the true mean ~95% of the time (a normal or percentile-bootstrap
    interval covers ~88% there)."""
    rng = np.random.default_rng(1)
    cover = [(c := stats.mean_ci(rng.normal(3.0, 2.0, 5)))["lo"] <= 3.0 <= c["hi"] for _ in range(2000)]
    assert 0.93 <= np.mean(cover) <= 0.97


@pytest.mark.parametrize("n", [7, 9, 15])
def test_median_interval_covers_at_its_stated_level(n):
    """The order-statistic interval of a median (the speed protocol's ratios) covers a skewed
    distribution's true median at least at its stated level, and its bounds are known ranks."""
    rng = np.random.default_rng(n)
    true = float(np.exp(0.1))                      # median of exp(N(0.1, 0.3)), a skewed ratio
    runs = [stats.median_ci(np.exp(rng.normal(0.1, 0.3, n))) for _ in range(4000)]
    cover = np.mean([r["lo"] <= true <= r["hi"] for r in runs])
    assert runs[0]["level"] >= 0.95 and cover >= runs[0]["level"] - 0.015
    r = stats.median_ci(np.arange(1.0, n + 1))
    assert (r["lo"], r["hi"]) == {7: (1, 7), 9: (2, 8), 15: (4, 12)}[n] and r["n"] == n


def test_known_effect_is_supported_and_its_reverse_contradicted():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 30)          # d = 1
    v = stats.verdict_greater("a > b", stats.diff_ci(a, b), unit="texts")
    assert v["verdict"] == "supported" and "n = 30 vs 30 texts" in v["text"]
    assert stats.verdict_greater("b > a", stats.diff_ci(b, a))["verdict"] == "contradicted"
    base = rng.normal(0, 1, 20)
    paired = stats.diff_ci(base + 0.5 + rng.normal(0, 0.3, 20), base, paired=True)
    assert stats.verdict_greater("after > before", paired)["verdict"] == "supported" and paired["n"] == 20


def test_null_case_is_not_supported_and_no_difference_inconclusive():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.0, 1.0, 30), rng.normal(0.0, 1.0, 30)
    d = stats.diff_ci(a, b)
    assert stats.verdict_greater("a > b", d)["verdict"] == "not supported"
    # 30 vs 30 cannot show equivalence within d = 0.2: absence of evidence is not evidence
    eq = stats.verdict_equal("a = b", d)
    assert eq["verdict"] == "inconclusive"
    assert eq["margin"] == pytest.approx(0.2 * d["sd"]) and "equivalence margin ±" in eq["text"]


def test_equivalence_case_supports_no_difference():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 1.0, 2000), rng.normal(0.01, 1.0, 2000)
    eq = stats.verdict_equal("a = b", stats.diff_ci(a, b))
    assert eq["verdict"] == "supported" and eq["p_tost"] < 0.05
    assert "Cohen's d 0.2 x pooled sd" in eq["text"]
    base = rng.normal(0, 1, 200)   # paired: the margin is in units of the sd of the differences
    eq = stats.verdict_equal("same", stats.diff_ci(base + rng.normal(0, 0.1, 200), base, paired=True))
    assert eq["verdict"] == "supported" and "paired differences" in eq["margin_rule"]
    far = stats.verdict_equal("a = b", stats.diff_ci(rng.normal(2, 1, 50), rng.normal(0, 1, 50)))
    assert far["verdict"] == "inconclusive" and far["strength"] == "a difference larger than the margin"


def _per_text(sent_seq, rand_seq, sent_par, rand_par, n=30, noise=0.01):
    rng = np.random.default_rng(0)
    mk = lambda m: {k: m + rng.normal(0, noise, n) for k in inertia.METRICS}  # noqa: E731
    return {"sentence/sequential": mk(sent_seq), "random/sequential": mk(rand_seq),
            "sentence/parallel": mk(sent_par), "random/parallel": mk(rand_par)}


def test_inertia_verdicts_follow_synthetic_numbers():
    v = inertia.verdicts(_per_text(0.4, 0.5, 0.2, 0.2))
    assert v["sequential_strengthens"]["verdict"] == "supported"
    assert v["semantic_irrelevant"]["verdict"] == "supported"
    assert v["semantic_irrelevant_beyond_tokens"]["verdict"] == "supported"     # gains 0.3 vs 0.2
    assert v["parallel_no_difference"]["verdict"] == "inconclusive"   # n = 30: equivalence not shown
    v = inertia.verdicts(_per_text(0.4, 0.5, 0.2, 0.2, n=800))
    assert v["parallel_no_difference"]["verdict"] == "supported"
    v = inertia.verdicts(_per_text(0.4, 0.3, 0.6, 0.5))
    assert v["sequential_strengthens"]["verdict"] == "contradicted"
    assert v["semantic_irrelevant"]["verdict"] == "contradicted"
    assert v["parallel_no_difference"]["verdict"] == "inconclusive"   # outside the margin: not a fourth verdict
    # random > sentences in both manners by the same amount: token makeup, not order or meaning
    v = inertia.verdicts(_per_text(0.4, 0.5, 0.3, 0.4))
    assert v["semantic_irrelevant"]["verdict"] == "supported"
    assert v["semantic_irrelevant_beyond_tokens"]["verdict"] == "not supported"
    v = inertia.verdicts(_per_text(0.3, 0.3, 0.3, 0.3))
    assert v["sequential_strengthens"]["verdict"] == "not supported"
    assert v["semantic_irrelevant"]["verdict"] == "not supported"


def test_ablation_verdicts_and_matched_control():
    rng = np.random.default_rng(0)
    big = {"pattern_overlap": 0.5 + rng.normal(0, 0.02, 12), "griffin_jaccard": 0.6 + rng.normal(0, 0.02, 12),
           "ppl_ratio_vs_clean_griffin": 1.5 + rng.normal(0, 0.05, 12)}
    small = {"pattern_overlap": 0.9 + rng.normal(0, 0.02, 12), "griffin_jaccard": 0.95 + rng.normal(0, 0.02, 12),
             "ppl_ratio_vs_clean_griffin": 1.0 + rng.normal(0, 0.01, 12)}
    assert {x["verdict"] for x in hh_ablation.verdicts({"heavy": big, "control": small}).values()} == {"supported"}
    assert {x["verdict"] for x in hh_ablation.verdicts({"heavy": small, "control": big}).values()} == {"contradicted"}
    same = hh_ablation.verdicts({"heavy": small, "control": {k: v[::-1] for k, v in small.items()}})
    assert {x["verdict"] for x in same.values()} == {"not supported"}
    assert hh_ablation.matched_control(10, [0, 5], 0, skip_first=False) == 1
    assert hh_ablation.matched_control(10, [4, 5], 4, skip_first=True) == 3
    assert hh_ablation.matched_control(10, [4], 4, skip_first=True) == 5         # ties: the later one
    assert hh_ablation.matched_control(10, [1, 2], 1, skip_first=True) == 3      # never token 0
    assert hh_ablation.matched_control(10, [8, 7], 7, skip_first=True) == 6      # never the last token


def test_relu_verdicts_are_across_seeds_not_layers():
    def model(act, seed, recall, zeros):
        return {"hidden_act": act, "seed": seed, "recall": recall, "exact_zero": zeros}

    res = {f"r{s}": model("relu", s, 0.8 + 0.01 * s, 0.5) for s in range(3)}
    res.update({f"s{s}": model("silu", s, 0.5 + 0.01 * s, 0.0) for s in range(3)})
    res["smollm2-135m"] = {"hidden_act": "silu", "seed": None, "recall": 0.9, "exact_zero": 0.0}
    v = rs.verdicts(res, rs.CompareParams())
    assert v["limitation_1_router"]["verdict"] == "supported"
    assert v["limitation_1_router"]["difference"]["n"] == 3 and "n = 3 paired seeds" in v["limitation_1_router"]["text"]
    for s in range(3):
        res[f"r{s}"]["recall"] = 0.3 + 0.01 * s
    assert rs.verdicts(res, rs.CompareParams())["limitation_1_router"]["verdict"] == "contradicted"
    assert "note" in rs.verdicts({"r0": res["r0"], "s0": res["s0"]}, rs.CompareParams())


def test_pairs_of_the_same_token_are_left_out_of_the_overlap():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    z = np.stack([a, a, b, a])                     # tokens 5, 5, 7, 5: rows of token 5 identical
    every = common.overlap_figures(z, 0.2)
    distinct = common.overlap_figures(z, 0.2, ids=[5, 5, 7, 5])
    j_ab = common.overlap_figures(np.stack([a, b]), 0.2)["jaccard"]
    assert distinct["jaccard"] == pytest.approx(j_ab) and every["jaccard"] > distinct["jaccard"]
    assert distinct["consecutive"] == pytest.approx(common.overlap_figures(np.stack([a, b]), 0.2)["consecutive"])


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


# ---- the parallel context (no measured token at position 0) ---------------------------------------

def test_parallel_context_is_one_newline_on_smollm2_and_gets_a_new_run_id(lm, db):
    nl = lm.tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert lm.bos_ids == [] and runs.parallel_context(lm) == nl and len(nl) == 1
    assert runs.parallel_context(lm, "Words:") == lm.encode("Words:")          # a prefix replaces it
    r = runs.capture_run(lm, db, "red seven apple", mode="parallel", dtype="float32")
    ids = lm.encode("red seven apple")
    assert r.run_id == run_id_for(lm.fingerprint, ids, "parallel", nl, "dense", {}, "float32")
    assert r.run_id != run_id_for(lm.fingerprint, ids, "parallel", [], "dense", {}, "float32")  # old rule
    rec = db.run(r.run_id)
    assert rec.prefix == "\n"                                                    # shown in header and Runs
    assert [x["prefix"] for x in db.list_runs() if x["run_id"] == r.run_id] == ["\n"]
    want = hooks.capture(lm, ids, mode="parallel", prefix_ids=nl).z
    np.testing.assert_allclose(db.activations(r.run_id, 7), want[7], atol=1e-5)
    alone = hooks.capture(lm, ids, mode="parallel", prefix_ids=[]).z           # each token at position 0
    assert np.abs(alone[7] - want[7]).max() > 0.1


def test_cli_capture_parallel_and_runs_show_the_context(tmp_path, capsys):
    from moyu_core.__main__ import main

    db = str(tmp_path / "ctx.duckdb")
    assert main(["capture", "one two", "--mode", "parallel", "--db", db, "--json"]) == 0
    rid = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    assert main(["runs", "--db", db]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(rid))
    assert "parallel" in line and "'\\n'" in line


# ---- end to end on the real default model ------------------------------------------------------

def test_inertia_end_to_end_context_n_and_cache(lm, db, monkeypatch):
    calls = []
    real = hooks.capture

    def spy(lm_, ids, mode="sequential", prefix_ids=None, **kw):
        calls.append((mode, list(prefix_ids or []), len(ids)))
        return real(lm_, ids, mode=mode, prefix_ids=prefix_ids, **kw)

    monkeypatch.setattr(hooks, "capture", spy)
    p = inertia.InertiaParams(n_texts=3, n_tokens=6, layers=(0, 15, 29))
    res = inertia.run(lm, db, p)
    assert res["cached"] is False
    nl = runs.parallel_context(lm)
    # every forward starts with the one-token context: no measured token sits at position 0
    assert len(calls) == 2 * 2 * 3 and all(prefix == nl for _, prefix, _ in calls)
    assert {m for m, _, _ in calls} == {"parallel", "sequential"} and all(n == 6 for _, _, n in calls)
    assert res["context"]["ids"] == nl and res["context"]["scored_positions"] == {"parallel": [1, 1],
                                                                                  "sequential": [2, 6]}
    assert res["n_texts"] == {"sentence": 3, "random": 3}
    for c in inertia.CONDITIONS:
        e = res[c]["jaccard_top10"]
        assert e["n"] == 3 and e["lo"] <= e["mean"] <= e["hi"] and 0 < e["mean"] <= 1
        assert [r["layer"] for r in res[c]["per_layer"]] == [0, 15, 29]
    v = res["verdicts"]
    assert v["sequential_strengthens"]["difference"]["n"] == 6
    assert v["parallel_no_difference"]["verdict"] == "inconclusive"  # 3 vs 3 cannot show equivalence
    assert "margin" in v["parallel_no_difference"]["text"]
    key = db.results(inertia.KIND)[0]["params"]
    assert key["version"] == inertia.VERSION and key["context_rule"] == runs.CONTEXT_RULE
    json.dumps(res)
    again = inertia.run(lm, db, p)
    assert again["cached"] is True and again["sentence/sequential"] == res["sentence/sequential"]
    assert len(calls) == 12
    assert "'\\n'" in inertia.summary_text(again)


def test_hh_ablation_end_to_end_arms_and_matched_scoring(lm, db):
    p = hh_ablation.AblationParams(n_texts=2, prompt_tokens=16, continuation_tokens=4, n_heavy=2, min_readers=4)
    res = hh_ablation.run(lm, db, p)
    assert res["cached"] is False and res["n_texts"] == 2
    for t in res["per_text"]:
        for arm, skip_first in hh_ablation.ARMS.items():
            a = t[arm]
            target, control = a["heavy"]["position"], a["control"]["position"]
            assert target == min(a["heavy_hitters"]) and control not in a["heavy_hitters"]
            assert all(h <= 16 - 4 for h in a["heavy_hitters"])                   # enough readers
            assert a["scored_from"] == max(target, control) + 1
            if skip_first:
                assert 0 not in a["heavy_hitters"] and control != 0
            assert 0 <= a["heavy"]["pattern_overlap"] <= 1 and a["control"]["ppl_griffin"] > 1
    assert res["sink_included"]["target_is_token0_share"] == 1.0                # smollm2: token 0 is the sink
    assert res["sink_excluded"]["target_is_token0_share"] == 0.0
    assert len(res["verdicts"]) == 6 and all("n = 2 paired texts" in v["text"] for v in res["verdicts"].values())
    assert "continuation" in res["scoring"] and "unablated" in res["scoring"]["continuation"]
    assert hh_ablation.run(lm, db, p)["cached"] is True
    assert hooks.hook_count(lm.model) == 0


def test_relu_swiglu_seeds_share_one_step_budget_fixed_before_training(lm, db, tmp_path, monkeypatch):
    monkeypatch.setattr(rs, "TRAINED_DIR", tmp_path / "trained")
    tp = rs.TrainParams(hidden=32, layers=2, heads=2, kv_heads=1, d_ff=64, seq_len=32, batch=2, steps=3,
                        probe_steps=1, suffix="-pytest")
    seen = []
    got = rs.train_pair(tp, progress=lambda f, m: seen.append((f, m)))
    infos = got["models"]
    assert sorted(infos) == sorted(f"tiny-{a}-s{s}-pytest" for a in ("relu", "swiglu") for s in (0, 1, 2))
    assert {i["steps"] for i in infos.values()} == {3} and {i["lr_sum"] for i in infos.values()} == \
        {infos["tiny-relu-s0-pytest"]["lr_sum"]}
    assert len({i["params"] for i in infos.values()}) == 1 and got["budget"]["steps"] == 3
    assert "min left" in seen[-1][1]
    assert rs.train_pair(tp)["models"]["tiny-relu-s2-pytest"]["cached"] is True
    # the time cap becomes one step count for every model, fixed before any of them trains
    capped = rs.TrainParams(hidden=32, layers=2, heads=2, kv_heads=1, d_ff=64, seq_len=32, batch=2, steps=10_000,
                            max_minutes=0.002, seeds=(0, 1), probe_steps=1, suffix="-cap")
    c = rs.train_pair(capped)
    steps = {i["steps"] for i in c["models"].values()}
    assert len(steps) == 1 and c["budget"]["capped"] and steps == {c["budget"]["steps"]} and steps.pop() < 10_000
    assert len({i["lr_sum"] for i in c["models"].values()}) == 1
    cp = rs.CompareParams(models=("no-such-model",), train_tokens=96, test_tokens=48, n_layers=2, router_steps=5)
    res = rs.compare(cp, tuple(infos), db)
    relu, silu = res["models"]["tiny-relu-s0-pytest"], res["models"]["tiny-swiglu-s0-pytest"]
    assert relu["hidden_act"] == "relu" and relu["exact_zero"] > 0.05 and silu["exact_zero"] < 0.01
    assert relu["seed"] == 0 and relu["router_rank"] == 3                       # ~5% of a 32 x 64 gated MLP
    assert "no-such-model" in res["skipped"]
    zeros = res["verdicts"]["relu_sparser"]
    assert zeros["verdict"] == "supported" and zeros["difference"]["n"] == 3   # 3 seeds, not layers
    assert rs.compare(cp, tuple(infos), db)["models"]["tiny-relu-s0-pytest"]["cached"] is True


def test_cli_inertia_json_and_applicability_intervals(tmp_path, capsys, monkeypatch):
    from moyu_core.__main__ import main

    db = str(tmp_path / "cli.duckdb")
    assert main(["inertia", "--db", db, "--texts", "2", "--tokens", "6", "--layers", "0,1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for c in inertia.CONDITIONS:
        assert out[c]["jaccard_top10"]["n"] == 2 and len(out[c]["per_layer"]) == 2
    assert "margin" in out["verdicts"]["parallel_no_difference"]["text"]
    assert main(["inertia", "--db", db, "--texts", "1"]) == 2  # user error, one line
    assert "at least 2 texts" in capsys.readouterr().err
    # applicability end to end, small: every method on the real model; with no router (empty
    # router folder, training off) dejavu's row is a clear error, the others have figures and
    # intervals over windows whose mean is the protocol's own figure
    monkeypatch.setenv("MOYU_ROUTER_DIR", str(tmp_path / "routers"))
    p = applicability.ApplicabilityParams(models=("smollm2-135m", "no-such-model"), windows=2,
                                          prompt_len=32, gen_len=8, train_router=False)
    store = Store(db)
    res = applicability.run(store, p)
    rows = {r["method"]: r for r in res["table"]}
    assert set(rows) == set(REGISTRY) and "no-such-model" in res["model_errors"]
    assert "train-router" in rows["dejavu"]["error"]
    assert abs(rows["dense"]["ppl_ratio"] - 1) < 1e-6 and rows["oracle"]["sparsity"] > 0.4
    g = rows["griffin"]
    assert g["windows"] == 2 and g["ppl_ratio_ci"]["n"] == 2 and g["top1_ci"]["n"] == 2
    assert g["ppl_ratio_ci"]["mean"] == pytest.approx(g["ppl_ratio"], rel=1e-9)
    assert g["top1_ci"]["mean"] == pytest.approx(g["top1_agree"])
    assert g["ppl_ratio_ci"]["lo"] <= g["ppl_ratio"] <= g["ppl_ratio_ci"]["hi"]
    assert applicability.run(store, p)["cached"] is True
    store.close()
    assert applicability.ApplicabilityParams().windows >= 12 and inertia.InertiaParams().n_texts >= 30
