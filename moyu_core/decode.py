"""Lean greedy KV-cache decode loop (batch 1) with executed sparse paths on fused kernels.

The prompt always runs dense; prefill and decode use SDPA attention (captures need eager attention
for its weights, decode does not), for dense and methods alike. Llama-architecture models decode
with the hand-written step of `llama_step.py` (its q/k/v, o and LM head products on the kernels),
others through transformers' forward. Every timing is labelled:

- *executed*: each layer's MLP is one call per token of a fused kernel of `moyu_core/kernels`
  (bound to its layer: `method_kernels`, `sliced_kernels`) that applies the method's selection
  itself and reads only what the method keeps. `generate` swaps it in as a `KernelMLP`; `in_turn`
  hands it to the decoder, whose whole step is then one call of the kernels' `Decoder`. Dense decoding runs the same kernels over every neuron (they read weights about twice
  as fast as torch's matrix-vector product here, so dense gets them too: a speed-up measures the
  skipped bytes, not a better product). Sequence-level methods (griffin, static) copy the kept
  neurons of the prompt's masks into a smaller MLP first (timed: `slice_ms`); per-token methods
  (`EXECUTED`) decide inside the kernel; teal also skips input channels of q, k, v and o.
- *simulated*: the dense MLP runs and z is masked (teal: the input of every linear), quality only.
  Families without an executed path (`executed_path`: non-gated MLPs, MLP biases, an activation
  the kernels lack) and methods without a kernel always run simulated.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Callable

import torch

from . import kernels, llama_step
from .analysis import speedup_ceiling, weight_shares
from .errors import MoyuError
from .hooks import input_intervention, method_intervention
from .keep import keep_count
from .methods import REGISTRY, Method, make
from .models import fused_attention
from .preparation import prepare

Kernel = Callable[[torch.Tensor], torch.Tensor]   # one token's MLP input (d,) -> MLP output (d,): a bound
                                                   # kernel (`kernels.ops().Mlp`)
_NONE = torch.empty(0)


def executed_path(lm, method: Method | None = None) -> bool:
    """Whether executed sparse decoding exists for this model (and method): a gated MLP in its own
    module, without biases, with an activation the kernels have (llama, qwen2, qwen3, mistral,
    gemma2, gemma3, phi3); a method needs a kernel (`EXECUTED`, or sequence level), and teal the
    hand-written llama step (its attention products)."""
    if not (lm.gated and lm.family.mlp is not None and not lm.mlp_weights(0).biased
            and activation(lm) is not None):
        return False
    if method is None or method.name == "dense" or method.sequence_level:
        return True
    if method.skips == "all_linear" and not llama_step.supported(lm):
        return False
    return method.name in EXECUTED


def activation(lm) -> int | None:
    """The kernels' code for the model's MLP activation (None: not one they have)."""
    return lm.derived(("kernels.activation",), lambda: kernels.activation_kind(lm.parts(0).act))


def ceiling(lm, name: str, keep: float) -> float | None:
    """The decode speed-up ceiling of the registered method `name` at `keep` on this model
    (`analysis.speedup_ceiling` at the method's `skips`); None for an unknown name."""
    if name not in REGISTRY or keep is None:
        return None
    m, a = lm.derived(("weight_shares",), lambda: weight_shares(lm.model))
    return speedup_ceiling(m, float(keep), REGISTRY[name].skips, a)


# ---- one kernel per method and layer -------------------------------------------------------------

def _dense(lm, i, method, kind) -> Kernel:
    gu, dt = kernels.stream_layout(lm, i)
    return kernels.ops().bind_mlp_dense(gu, dt, kind)


def _tda(lm, i, method, kind) -> Kernel:
    gu, dt = kernels.stream_layout(lm, i)
    return kernels.ops().bind_mlp_z_threshold(gu, dt, kind, method.layer_threshold(i, lm), _NONE)


def _cett(lm, i, method, kind) -> Kernel:
    if method._keeps_all():
        return _dense(lm, i, method, kind)
    gu, dt = kernels.stream_layout(lm, i)
    t, scale = method.resource(lm, "thresholds")[i], method.resource(lm, "derived")[i].float().contiguous()
    return kernels.ops().bind_mlp_z_threshold(gu, dt, kind, t, scale)


def _oracle(lm, i, method, kind) -> Kernel:
    gu, dt = kernels.stream_layout(lm, i)
    return kernels.ops().bind_mlp_z_topk(gu, dt, kind, keep_count(lm.d_ff, method.params.keep))


def _cats(lm, i, method, kind) -> Kernel:
    if method.params.keep >= 1.0:
        return _dense(lm, i, method, kind)
    g, ud = kernels.gate_layout(lm, i)
    return kernels.ops().bind_mlp_gate_threshold(g, ud, kind, method.resource(lm, "thresholds")[i])


def _experts(method, lm, i):
    return method.resource(lm, "derived")[i], keep_count(method.params.experts, method.params.keep)


def _moe_oracle(lm, i, method, kind) -> Kernel:
    if method.params.keep >= 1.0:
        return _dense(lm, i, method, kind)
    g, ud = kernels.gate_layout(lm, i)
    ex, k = _experts(method, lm, i)
    return kernels.ops().bind_mlp_gate_experts(g, ud, kind, ex.members, k)


def _moe(lm, i, method, kind) -> Kernel:
    if method.params.keep >= 1.0:
        return _dense(lm, i, method, kind)
    rec = kernels.records(lm, i)
    ex, k = _experts(method, lm, i)
    return kernels.ops().bind_mlp_router_experts(rec, kind, ex.centroids, ex.members, k)


def _dejavu(lm, i, method, kind) -> Kernel:
    if method.params.keep >= 1.0:
        return _dense(lm, i, method, kind)
    router = method.resource(lm, "router")
    rec = kernels.records(lm, i)
    blocks = lm.derived((i, "kernels.router", id(router)), lambda: kernels.router_blocks(router.w1[i], router.w2[i]))
    return kernels.ops().bind_mlp_router_topk(rec, kind, blocks, keep_count(lm.d_ff, method.params.keep))


def _teal(lm, i, method, kind) -> Kernel:
    t = method.layer_thresholds(i, lm)
    gut, (_, dt) = kernels.teal_layout(lm, i), kernels.stream_layout(lm, i)
    return kernels.ops().bind_teal_mlp(gut, dt, kind, t["gate"], t["up"], t["down"])


# the per-token methods with an executed path: name -> kernel(lm, layer, method, activation code)
EXECUTED: dict[str, Callable] = {"dense": _dense, "tda": _tda, "cett": _cett, "oracle": _oracle, "cats": _cats,
                                 "moe-oracle": _moe_oracle, "dejavu": _dejavu, "moe": _moe, "teal": _teal}


class KernelMLP(torch.nn.Module):
    """One layer's MLP as one kernel call per decoded token (batch 1, one position); longer
    inputs (a prompt) run the layer's own MLP."""

    def __init__(self, mlp: torch.nn.Module, run: Kernel):
        super().__init__()
        self.mlp, self.run = mlp, run

    def forward(self, x):
        if x.shape[0] != 1 or x.shape[1] != 1:
            return self.mlp(x)
        return self.run(x.reshape(-1)).view(1, 1, -1)


@contextmanager
def swapped_mlps(lm, make_mlp):
    """Temporarily replace every layer's MLP module (the family's `mlp` attribute) by
    make_mlp(layer_index, mlp); restored in finally."""
    attr = lm.family.mlp
    if attr is None:
        raise MoyuError(f"{lm.family.name} has no MLP module to swap: no executed path")
    with lm.lock:
        saved = [getattr(layer, attr) for layer in lm.layers]
        try:
            for i, layer in enumerate(lm.layers):
                setattr(layer, attr, make_mlp(i, saved[i]))
            yield
        finally:
            for layer, mlp in zip(lm.layers, saved):
                setattr(layer, attr, mlp)


def method_kernels(lm, method: Method) -> list[Kernel]:
    """Every layer's kernel of a per-token method (`EXECUTED`)."""
    kind, build = activation(lm), EXECUTED[method.name]
    return [build(lm, i, method, kind) for i in range(lm.n_layers)]


def sliced_kernels(lm, keep_idx: list[torch.Tensor]) -> list[Kernel]:
    """Every layer's dense kernel over neurons keep_idx[layer] only, copied out of the stream
    layout (the slicing a sequence-level method pays once per prompt)."""
    kind = activation(lm)

    def make(i):
        gu, dt = (kernels.hugepage_rows(w, keep_idx[i]) for w in kernels.stream_layout(lm, i))
        return kernels.ops().bind_mlp_dense(gu, dt, kind)
    return [make(i) for i in range(lm.n_layers)]


def _kernel_mlps(lm, runs: list[Kernel]):
    """Context: layer i's MLP runs runs[i] (a `KernelMLP`)."""
    return swapped_mlps(lm, lambda i, mlp: KernelMLP(mlp, runs[i]))


def kernel_mlps(lm, method: Method):
    """Context: every layer's MLP runs the method's kernel (built before the swap)."""
    return _kernel_mlps(lm, method_kernels(lm, method))


def sliced_mlps(lm, keep_idx: list[torch.Tensor]):
    """Context: every layer's MLP restricted to neurons keep_idx[layer] (`sliced_kernels`, copied
    when this is called: `generate` times it as the slicing)."""
    return _kernel_mlps(lm, sliced_kernels(lm, keep_idx))


def _layouts(lm, method: Method) -> None:
    """Build the weight layouts the run reads before anything is timed (once per model)."""
    for i in range(lm.n_layers):
        kernels.stream_layout(lm, i)
    if llama_step.supported(lm):
        llama_step.DenseLinears(lm)


# ---- the loop ------------------------------------------------------------------------------------

@torch.inference_mode()
def _loop(lm, ids: list[int], n: int, prompt_ctx=None, decode_ctx=None, linears=None, own_step=True):
    with fused_attention(lm):
        return _timed_loop(lm, ids, n, prompt_ctx, decode_ctx, linears, own_step)


def _timed_loop(lm, ids, n, prompt_ctx, decode_ctx, linears, own_step):
    """-> tokens, prefill s, setup s (entering decode_ctx: slicing), decode s, decode CPU s (all
    threads of the process: on one thread, the work itself, whatever else the machine runs),
    each decode step's s."""
    x = torch.tensor([ids])
    t0 = time.perf_counter()
    with prompt_ctx() if prompt_ctx is not None else nullcontext():
        out = lm.model(x, use_cache=True)
    prefill = time.perf_counter() - t0
    past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
    toks = [tok]
    with ExitStack() as stack:
        t1 = time.perf_counter()
        if decode_ctx is not None:
            stack.enter_context(decode_ctx())
        setup = time.perf_counter() - t1
        t2, c2 = time.perf_counter(), time.process_time()
        steps = []
        if own_step and llama_step.supported(lm):
            dec = llama_step.LlamaDecoder(lm, past, len(ids), n, linears)
            for _ in range(n - 1):
                t = time.perf_counter()
                tok = int(dec.step(tok).argmax())
                steps.append(time.perf_counter() - t)
                toks.append(tok)
        else:
            for _ in range(n - 1):
                t = time.perf_counter()
                out = lm.model(torch.tensor([[tok]]), cache=past, use_cache=True)
                past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
                steps.append(time.perf_counter() - t)
                toks.append(tok)
        dt, cpu = time.perf_counter() - t2, time.process_time() - c2
    return toks, prefill, setup, dt, cpu, steps


def _masked(lm, method: Method, state: dict, own_step: bool):
    """Simulated decoding: the dense MLP runs and z is masked; a method that thresholds every
    linear's input (teal) also masks the inputs of gate and up, and of q, k, v and o where the
    hand-written step does not (`llama_step.InputMaskedLinears`)."""
    fixed: dict[int, torch.Tensor] = {}

    def on_z(i, z, gate, x):
        if method.sequence_level:
            if i not in fixed:   # the prompt's mask as a 0/1 vector, built once per layer
                fixed[i] = torch.zeros(z.shape[-1], dtype=z.dtype).index_fill_(0, state[i], 1)
            return z * fixed[i]
        return z * method.select(i, z[0, -1:], gate[-1:], lm, x[-1:]).to(z.dtype)[None]

    def on_input(i, role, x):
        return x * method.input_keep(i, role, x, lm).to(x.dtype)

    @contextmanager
    def ctx():
        skip = ("down",) + (("q", "k", "v", "o") if own_step else ())
        with method_intervention(lm, on_z), (input_intervention(lm, on_input, exclude=skip)
                                             if method.skips == "all_linear" else nullcontext()):
            yield
    return ctx


def generate(lm, text: str | list[int], method: Method | None = None, max_new_tokens: int = 64,
             executed: bool = True) -> dict:
    """Greedy decode of max_new_tokens after a dense prompt (text, or token ids used as given).
    Returns method, params, keep, text, tokens, n_tokens, prefill_ms, slice_ms (copying the kept
    neurons of a sequence-level method; ~0 for the others), decode_tokens_per_s, decode_cpu_ms,
    decode_step_ms_median (the median decode step), label ('executed' | 'simulated')."""
    method = method or make("dense")
    _check_new_tokens(max_new_tokens)
    ids = _ids(lm, text)
    prepare(lm, method)
    state: dict[int, torch.Tensor] = {}
    run = executed and executed_path(lm, method)
    if run:
        _layouts(lm, method)
    seq_ctx = (lambda: _prompt_neurons(lm, method, state)) if method.sequence_level else None
    if method.name == "dense":
        label, args = "executed", (None, (lambda: kernel_mlps(lm, method)) if run else None, None, True)
    elif not run:
        linears = None
        if method.skips == "all_linear" and llama_step.supported(lm):
            linears = llama_step.InputMaskedLinears(lm, [method.layer_thresholds(i, lm) for i in range(lm.n_layers)])
        own_step = method.skips != "all_linear" or linears is not None
        label, args = "simulated", (seq_ctx, _masked(lm, method, state, own_step), linears, own_step)
    elif method.sequence_level:
        label, args = "executed", (seq_ctx, lambda: sliced_mlps(lm, [state[i] for i in range(lm.n_layers)]), None, True)
    else:
        label, args = "executed", (None, lambda: kernel_mlps(lm, method), _sparse_linears(lm, method), True)
    toks, pre, setup, dt, cpu, steps = _loop(lm, ids, max_new_tokens, *args)
    return _result(lm, method, toks, pre, setup, dt, cpu, steps, label)


def _check_new_tokens(n) -> None:
    if not 1 <= int(n) <= 4096:
        raise MoyuError(f"max_new_tokens must be in [1, 4096], got {n}")


def _ids(lm, text: str | list[int]) -> list[int]:
    return lm.encode(text) if isinstance(text, str) else list(lm.bos_ids) + list(text)


def _prompt_neurons(lm, method: Method, state: dict):
    """Context for the dense prompt of a sequence-level method: state[layer] = the neurons it
    keeps, decided on the prompt's last position."""
    def fn(i, z, gate, x):
        state[i] = method.select(i, z[0].detach(), gate, lm, x)[-1].nonzero()[:, 0]
    return method_intervention(lm, fn)


def _sparse_linears(lm, method: Method):
    """TEAL executed: the attention products skipping input channels; None for MLP-only methods."""
    if method.skips != "all_linear":
        return None
    return llama_step.InputSparseLinears(lm, [method.layer_thresholds(i, lm) for i in range(lm.n_layers)])


def _result(lm, method: Method, toks, prefill, setup, dt, cpu, steps, label) -> dict:
    """`generate`'s result from a decode's tokens and timings (s)."""
    return {"method": method.name, "params": dataclasses.asdict(method.params),
            "keep": getattr(method.params, "keep", None),
            "text": lm.tokenizer.decode(toks), "tokens": toks, "n_tokens": len(toks),
            "prefill_ms": prefill * 1000, "slice_ms": setup * 1000,
            "decode_tokens_per_s": (len(toks) - 1) / dt if dt > 0 else float("nan"),
            "decode_cpu_ms": cpu * 1000,
            "decode_step_ms_median": statistics.median(steps) * 1000 if steps else float("nan"), "label": label}


@torch.inference_mode()
def in_turn(lm, text: str | list[int], method: Method, max_new_tokens: int) -> tuple[dict, dict]:
    """Dense and an executed method decoding one prompt in turn, step by step: one dense prefill
    (a sequence-level method decides its neurons on it), then two decoders with their own KV
    caches (`llama_step.LlamaDecoder` with each side's kernels) taking steps alternately, the one
    that goes first swapped every step. Both sides thus meet the same state of this shared machine,
    which a whole decode of one side and then the other does not. Llama-architecture models with
    an executed path only. -> (dense, method) results as `generate` returns them (decode time:
    the sum of the steps)."""
    _check_new_tokens(max_new_tokens)
    if not (executed_path(lm, method) and llama_step.supported(lm)):
        raise MoyuError(f"{method.name} on {lm.name}: decoding in turn needs an executed path and a Llama model")
    dense = make("dense")
    ids = _ids(lm, text)
    prepare(lm, method)
    _layouts(lm, method)
    state: dict[int, torch.Tensor] = {}
    runs = None if method.sequence_level else method_kernels(lm, method)
    with lm.lock, fused_attention(lm):
        t0 = time.perf_counter()
        with _prompt_neurons(lm, method, state) if method.sequence_level else nullcontext():
            out = lm.model(torch.tensor([ids]), use_cache=True)
        prefill, tok = time.perf_counter() - t0, int(out.logits[0, -1].argmax())
        setup = 0.0
        if method.sequence_level:   # the slicing, timed as in `generate`
            t1 = time.perf_counter()
            runs = sliced_kernels(lm, [state[i] for i in range(lm.n_layers)])
            setup = time.perf_counter() - t1
        decs = [llama_step.LlamaDecoder(lm, out.past_key_values, len(ids), max_new_tokens, None,
                                        method_kernels(lm, dense)),
                llama_step.LlamaDecoder(lm, out.past_key_values, len(ids), max_new_tokens,
                                        _sparse_linears(lm, method), runs)]
        toks, steps, cpu = [[tok], [tok]], [[], []], [0.0, 0.0]
        for t in range(max_new_tokens - 1):
            for k in ((0, 1) if t % 2 == 0 else (1, 0)):
                a, c = time.perf_counter(), time.process_time()
                toks[k].append(int(decs[k].step(toks[k][-1]).argmax()))
                steps[k].append(time.perf_counter() - a)
                cpu[k] += time.process_time() - c
    return (_result(lm, dense, toks[0], prefill, 0.0, sum(steps[0]), cpu[0], steps[0], "executed"),
            _result(lm, method, toks[1], prefill, setup, sum(steps[1]), cpu[1], steps[1], "executed"))


def compare_speed(lm, text: str | list[int], method: Method, max_new_tokens: int = 32, pairs: int = 3,
                  executed: bool = True) -> dict:
    """Dense and the method alternating in one process, `pairs` times after one short warm-up pair
    (the speed protocol). Where the method is executed on a Llama-architecture model, a pair is
    `in_turn`: both decode together, step for step; else a whole decode of each, one after the
    other. A pair's ratio is dense's median decode step over the method's: on this shared machine a
    stall of the whole VM lands in single steps, and a median step ignores it where a side's total
    time does not. Returns
    speedup_median (the median of the ratios), ratios, throughput_ratios (decode tokens/s, the same
    pairs), cpu_ratio_median (from decode CPU time: on one thread a check that is robust to a busy
    machine), label, and the last pair's results."""
    if executed and executed_path(lm, method) and llama_step.supported(lm):
        def pair(n):
            return in_turn(lm, text, method, n)
    else:
        def pair(n):
            return generate(lm, text, make("dense"), n), generate(lm, text, method, n, executed=executed)
    pair(4)
    ratios, thr, cpu, d, r = [], [], [], None, None
    for _ in range(max(1, int(pairs))):
        d, r = pair(max_new_tokens)
        ratios.append(d["decode_step_ms_median"] / r["decode_step_ms_median"])
        thr.append(r["decode_tokens_per_s"] / d["decode_tokens_per_s"])
        cpu.append(d["decode_cpu_ms"] / max(r["decode_cpu_ms"], 1e-9))
    return {"speedup_median": statistics.median(ratios), "ratios": ratios, "throughput_ratios": thr,
            "cpu_ratio_median": statistics.median(cpu), "label": r["label"], "dense": d, "method": r,
            "pairs": len(ratios), "tokens": max_new_tokens}
