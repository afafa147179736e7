"""The synthetic weight rule of src/models/synthetic.rs, bit for bit, in numpy.

Value i of tensor `name`: h = fmix32(i * 0x9E3779B1 ^ fnv1a32(name)), u = (h >> 8) / 2**24 * 2 - 1
(exact in float32), then weights u * sqrt(6 / fan_in), biases 0.1 u, BatchNorm weight 1 + 0.1 u,
running_mean 0.1 u, running_var 1 + 0.5 u.
"""

import numpy as np


def fnv1a32(name: str) -> int:
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def unit(name: str, n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.uint64)
    x = ((i * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    x ^= np.uint32(fnv1a32(name))
    x ^= x >> np.uint32(16)
    x = (x.astype(np.uint64) * np.uint64(0x85EBCA6B) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    x ^= x >> np.uint32(13)
    x = (x.astype(np.uint64) * np.uint64(0xC2B2AE35) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    x ^= x >> np.uint32(16)
    u = (x >> np.uint32(8)).astype(np.float32) / np.float32(16777216.0)
    return u * np.float32(2.0) - np.float32(1.0)


def tensor(name: str, shape) -> np.ndarray:
    n = int(np.prod(shape))
    return unit(name, n).reshape(shape)


def param(name: str, shape) -> np.ndarray:
    u = tensor(name, shape)
    if name.endswith("running_var"):
        return u * np.float32(0.5) + np.float32(1.0)
    if name.endswith("running_mean"):
        return u * np.float32(0.1)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return u * np.sqrt(np.float32(6.0) / np.float32(fan_in)).astype(np.float32)
    if name.endswith("weight"):
        return u * np.float32(0.1) + np.float32(1.0)
    return u * np.float32(0.1)


def fill(model) -> None:
    """Overwrites every parameter and buffer of a torch module with the synthetic values."""
    import torch

    state = model.state_dict()
    for name, t in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        t.copy_(torch.from_numpy(param(name, tuple(t.shape))))
