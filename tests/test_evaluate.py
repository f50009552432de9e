"""Quality protocol on the real model, tiny settings; results stored and served from the store."""
from moyu_core.evaluate import evaluate
from moyu_core.methods import make


def test_evaluate_dense_and_oracle(lm, db):
    d = evaluate(lm, make("dense"), db, windows=2, prompt_len=32, gen_len=8)
    assert abs(d["ppl_ratio"] - 1.0) < 1e-6 and d["sparsity"] == 0.0 and d["top1_agree"] == 1.0
    o = evaluate(lm, make("oracle", keep=0.5), db, windows=2, prompt_len=32, gen_len=8)
    assert abs(o["sparsity"] - 0.5) < 0.01 and o["kl"] > 0 and len(o["per_layer"]) == lm.n_layers
    g = evaluate(lm, make("griffin", keep=0.5), db, windows=2, prompt_len=32, gen_len=8)
    assert abs(g["sparsity"] - 0.5) < 0.01
    assert db.get_result("eval", {"model": lm.fingerprint, "method": "oracle", "params": {"keep": 0.5},
                                  "windows": 2, "prompt_len": 32, "gen_len": 8, "v": 1}) is not None
