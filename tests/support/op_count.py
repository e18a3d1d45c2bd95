"""Count what a piece of model code runs: aten ops by name, matmul FLOPs and attention FLOPs.

A `TorchDispatchMode` sees every op after autograd (Linear arrives as `addmm`/`mm`),
so two runs can be compared op for op. Matmul FLOPs are 2mnk per product; attention
FLOPs are counted from the shapes of each fused `scaled_dot_product` call as
4 * (batch x heads) * Lq * Lk * D (Q K^T and the product with V), because torch's
own FlopCounterMode counts 0 for the CPU kernel.
"""

from __future__ import annotations

import math
from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}


class OpTally(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.matmul_flops = 0
        self.attention_flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name in MATMULS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            self.matmul_flops += 2 * math.prod(a.shape) * b.shape[-1]
        elif "scaled_dot_product" in name:
            q, k = args[0], args[1]
            self.attention_flops += 4 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]
        return func(*args, **(kwargs or {}))

    @property
    def flops(self) -> int:
        return self.matmul_flops + self.attention_flops

    def matmuls(self) -> Counter:
        return Counter({name: n for name, n in self.ops.items() if name in MATMULS})
