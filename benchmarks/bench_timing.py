"""Timing and memory helpers of bench_ipadapter.py: one UNet step, interleaved rounds, peaks.

Kept apart so that our pack and another pack are timed by the very same code.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch
from support import checkpoints, unets


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Start a new high-water mark (CUDA allocator, or the process RSS via /proc/self/clear_refs)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the RSS high-water mark that getrusage reports
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the figure is then the process-lifetime high-water mark


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def summary(times: list[float]) -> dict:
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3, "runs": len(times)}


class Step:
    """One UNet call as `calc_cond_batch` makes it, for a loaded ModelPatcher."""

    def __init__(self, x, sigma, context, pooled):
        self.x, self.sigma, self.context, self.pooled = x, sigma, context, pooled

    def __call__(self, model, device: str) -> tuple[float, torch.Tensor]:
        options = dict(model.model_options.get("transformer_options", {}))
        options["cond_or_uncond"] = [1, 0]
        options["sigmas"] = self.sigma[: self.x.shape[0] // 2]  # as calc_cond_batch: one per latent, not per row
        extra = {}
        if self.pooled is not None:
            x = self.x
            extra["y"] = model.model.encode_adm(pooled_output=self.pooled, width=x.shape[3] * 8,
                                                height=x.shape[2] * 8, device=x.device)
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.model.apply_model(self.x, self.sigma, c_crossattn=self.context,
                                          transformer_options=options, **extra)
        sync(device)
        return time.perf_counter() - start, out


def step_inputs(model, base: str, latent: int, device: str, dtype: torch.dtype) -> Step:
    """One fixed cond+uncond batch (x, sigma, text context, SDXL pooled) shared by every timed variant."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    context = torch.randn(2, 77, checkpoints.CROSS_ATTENTION_DIM[base], generator=g).to(device, dtype)
    pooled = torch.randn(2, 1280, generator=g).to(device, dtype) if base == "sdxl" else None
    sigma = torch.full((2,), unets.sigma_for_timestep(model, 500), device=device)
    return Step(x, sigma, context, pooled)


def _best_pair(first, second, device: str, rounds: int = 15) -> tuple[float, float]:
    """Seconds per call of `first` and of `second`: the fastest of `rounds` single calls each, alternated.

    Noise on a shared machine only adds time, so the fastest call is the steadiest
    figure. Single calls, not batches: a longer timed interval is more likely to catch
    a neighbour's burst, which would bias the slower function's best time upward and
    inflate the difference. Alternating gives both the same conditions.
    """
    first()
    second()
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for slot, fn in enumerate((first, second)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            best[slot] = min(best[slot], time.perf_counter() - start)
    return best[0], best[1]


def attributed_cost(model, step: Step, device: str) -> dict | None:
    """What the attn2 replace patches add to one step, layer by layer, with the step's own inputs.

    One step runs with every registered attn2 patch wrapped in a recorder (on a clone: the
    model itself is not touched). Each recorded call is then replayed: the patch as
    registered, and the host's text attention alone (ComfyUI's `optimized_attention`, what
    the unpatched layer runs), alternately, each timed as its fastest single call
    (`_best_pair`). The sum of the differences is the patches' cost per step. On a shared
    machine this is far steadier than the difference of two step times. It leaves out
    effects on the rest of the step (caches), which the interleaved step times include.
    """
    import comfy.ldm.modules.attention as comfy_attention

    patches = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    if not patches:
        return None
    probe = model.clone()
    registered = probe.model_options["transformer_options"]["patches_replace"]["attn2"]
    calls = []

    def recorder(patch):
        def record(q, k, v, extra_options):
            calls.append((patch, q.clone(), k.clone(), v.clone(), dict(extra_options)))
            return patch(q, k, v, extra_options)
        return record

    for key, patch in list(registered.items()):
        registered[key] = recorder(patch)
    step(probe, device)
    patched_s = text_s = 0.0
    with torch.inference_mode():
        for patch, q, k, v, options in calls:
            def text(q=q, k=k, v=v, options=options):
                return comfy_attention.optimized_attention(q, k, v, options["n_heads"],
                                                           attn_precision=options.get("attn_precision"),
                                                           transformer_options=options)
            patched, alone = _best_pair(lambda patch=patch, q=q, k=k, v=v, options=options: patch(q, k, v, options),
                                        text, device)
            patched_s += patched
            text_s += alone
    return {"layers_called": len(calls), "patched_layers_ms": patched_s * 1e3, "text_attention_ms": text_s * 1e3,
            "added_ms": (patched_s - text_s) * 1e3}


def interleaved(models: dict[str, object], step: Step, device: str, warmup: int, repeats: int) -> dict:
    """Time every model once per round, rounds repeated; also the peak memory of one call each.

    Odd rounds run the models in reverse order (forward, backward, forward, ...), so a
    drift inside a round (caches, clocks, a neighbour's load) does not favour the models
    timed first: with 9 variants a round lasts over a minute on a CPU.
    """
    outputs = {}
    for _ in range(warmup):
        for name, m in models.items():
            outputs[name] = step(m, device)[1]
    plain = outputs["plain"].float()
    changed = {name: float((o.float() - plain).abs().max()) for name, o in outputs.items() if name != "plain"}
    times: dict[str, list[float]] = {name: [] for name in models}
    forward = list(models.items())
    orders = (forward, forward[::-1])
    for round_index in range(repeats):
        for name, m in orders[round_index % 2]:
            times[name].append(step(m, device)[0])
    peaks = {}
    for name, m in models.items():
        reset_peak(device)
        step(m, device)
        peaks[name] = peak_mb(device)
    plain_med = statistics.median(times["plain"])
    plain_best = min(times["plain"])
    result = {}
    for name, t in times.items():
        row = {**summary(t), "peak_memory_mb": peaks[name], "times_ms": [x * 1e3 for x in t]}
        if name != "plain":
            row["overhead_pct"] = (statistics.median(t) / plain_med - 1.0) * 100
            # Per-round ratios cancel slow drifts (thermal, other processes) that medians keep.
            row["paired_overhead_pct"] = (statistics.median(
                p / q for p, q in zip(t, times["plain"])) - 1.0) * 100
            row["max_abs_change_vs_plain"] = changed[name]
            added = attributed_cost(models[name], step, device)
            if added is not None:
                # Against the plain step's best time: the same "best of" statistic as the layer timings.
                row["attributed"] = {**added, "plain_step_best_ms": plain_best * 1e3,
                                     "overhead_pct": added["added_ms"] / (plain_best * 1e3) * 100}
        result[name] = row
    return result
