"""Model registry: shipped models, local folders and GGUF paths, clear errors."""
from __future__ import annotations

import pytest

from moyu_core import hooks, models, runs
from moyu_core.errors import MoyuError


def test_unknown_model_lists_available():
    with pytest.raises(MoyuError) as e:
        models.load("llama-9000")
    assert "smollm2-135m" in str(e.value) and "gemma3-270m" in str(e.value)


def test_missing_local_paths_are_clear(tmp_path):
    with pytest.raises(MoyuError, match="GGUF file not found"):
        models.load(str(tmp_path / "nope.gguf"))
    with pytest.raises(MoyuError, match="no config.json"):
        models.load(str(tmp_path))


def test_default_model_shape_and_no_bos(lm):
    assert (lm.n_layers, lm.d_ff, lm.n_heads) == (30, 1536, 9)
    assert lm.bos_ids == []
    assert lm.fingerprint == models.resolve("smollm2-135m")[1]


def test_local_hf_folder_loads_the_same_weights(lm):
    folder = models.CACHE_DIR / "models" / "smollm2-135m"
    local = models.load(str(folder))
    ids = lm.encode("Local folders load too.")
    assert local.encode("Local folders load too.") == ids
    a = hooks.capture(lm, ids).z
    b = hooks.capture(local, ids).z
    assert (a == b).all()


def test_local_gguf_path_loads(tmp_path):
    gguf = models._smollm2_gguf()
    local = models.load(str(gguf))
    assert local.n_layers == 30 and local.fingerprint != ""


def test_gemma3_captures_with_bos(db):
    gm = models.load("gemma3-270m")
    assert (gm.n_layers, gm.d_ff) == (18, 2048)
    r = runs.capture_run(gm, db, "The capital of France is Paris.")
    toks = db.tokens(r.run_id)
    assert toks[0][1] == "<bos>" and db.activations(r.run_id, 17).shape == (r.tokens, 2048)
    assert hooks.hook_count(gm.model) == 0


def test_chat_template(lm, db):
    r = runs.capture_run(lm, db, "What is a heavy hitter?", chat=True)
    pieces = [p for _, p in db.tokens(r.run_id)]
    assert pieces[0] == "<|im_start|>" and r.tokens > 8


def test_trained_folders_are_listed_without_the_experiment(tmp_path, monkeypatch):
    """Models `relu-swiglu` trained under cache/trained/ open by name, no import needed."""
    monkeypatch.setattr(models, "TRAINED_DIR", tmp_path)
    (tmp_path / "tiny-relu").mkdir()
    (tmp_path / "tiny-relu" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "tiny-relu" / "moyu_training.json").write_text("{}")
    (tmp_path / "half-written").mkdir()
    assert "tiny-relu" in models.available_models() and "half-written" not in models.available_models()
    assert models.resolve("tiny-relu")[0] == tmp_path / "tiny-relu"
