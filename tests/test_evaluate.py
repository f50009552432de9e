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
    assert {r["result"]["method"] for r in db.results(kind="eval")} == {"dense", "oracle", "griffin"}
    again = evaluate(lm, make("oracle", keep=0.5), db, windows=2, prompt_len=32, gen_len=8)
    assert again == o


def test_free_generation_and_bad_settings(lm):
    import pytest

    from moyu_core.errors import MoyuError
    r = evaluate(lm, make("griffin", keep=1.0), None, windows=1, prompt_len=32, gen_len=8, free_tokens=6)
    fg = r["free_generation"]
    assert fg["token_agreement"] == 1.0 and fg["text"] == fg["dense_text"] and fg["text"]
    for bad in ({"windows": 0}, {"prompt_len": 0}, {"gen_len": 5000}, {"free_tokens": -1}):
        with pytest.raises(MoyuError):
            evaluate(lm, make("dense"), None, **bad)


def test_cli_eval_and_generate_json(lm, tmp_path, capsys):
    import json

    from moyu_core.__main__ import main
    db = str(tmp_path / "cli.duckdb")
    assert main(["eval", "--method", "tda", "--keep", "0.5", "--windows", "1", "--prompt-len", "32",
                 "--gen-len", "8", "--free-tokens", "4", "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("method", "params", "ppl", "dense_ppl", "ppl_ratio", "kl", "top1_agree", "sparsity", "per_layer"):
        assert k in out, k
    assert out["method"] == "tda" and out["params"]["keep"] == 0.5 and "text_summary" not in out
    assert len(out["free_generation"]["text"]) > 0
    assert main(["generate", "The capital of France is", "--method", "cats", "--keep", "0.5",
                 "--max-new-tokens", "4", "--db", db, "--json"]) == 0
    g = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert g["label"] == "executed" and g["n_tokens"] == 4 and g["prefill_ms"] > 0 and g["decode_tokens_per_s"] > 0
    assert main(["eval", "--method", "nope", "--db", db]) == 2
    assert main(["generate", "hi", "--method", "tda", "--keep", "2", "--db", db]) == 2
    assert "keep must be" in capsys.readouterr().err
