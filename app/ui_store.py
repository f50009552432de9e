"""The store and the models, opened once per server process."""
from __future__ import annotations

import os

import streamlit as st

from moyu_core import models
from moyu_core.store import DEFAULT_DB


def db_path() -> str:
    return os.environ.get("MOYU_DB") or str(DEFAULT_DB)


def store():
    return _store(db_path())


@st.cache_resource(show_spinner=False)
def _store(path: str):
    """The local DuckDB store, layered over the team folder of bundles when MOYU_TEAM_DIR is set."""
    from moyu_core.share.team import open_store

    return open_store(path)


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(name: str):
    models.setup_compute()
    return models.load(name)


def model(name: str):
    """The loaded model (once per process), with a status box the first time."""
    if name in models._LOADED:
        return _model(name)
    with st.status(f"Loading {name} (once per server process)…", expanded=False) as s:
        lm = _model(name)
        s.update(label=f"Loaded {name} in {lm.load_seconds:.1f} s", state="complete")
    return lm


def available_models() -> list[str]:
    return models.available_models()


def default_model_index(names: list[str]) -> int:
    """Where the default model sits in a list of model names (0 when it is not there)."""
    return names.index(models.DEFAULT_MODEL) if models.DEFAULT_MODEL in names else 0
