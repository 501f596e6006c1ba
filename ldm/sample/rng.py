"""Every random draw of the project, from a seeded generator on the CPU.

A CPU `torch.Generator` cannot draw on a CUDA or MPS device, and the same seed gives other numbers
on other devices' generators. So every draw is made on the generator's device (the CPU) and then
moved: the same seed gives the same numbers on every device.
"""
import hashlib

import torch


def randn(shape, generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the generator's device, then moved to `device`.

    `generator` may also be a list of generators, one per row of the batch (shape[0] of them): each row is
    then drawn from its own, so a sample's noise does not depend on what else is in its batch.
    """
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device or "cpu")
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])


def rand(shape, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) numbers of `shape`, drawn like `randn`."""
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=generator.device).to(device or "cpu")


def randint(low: int, high: int, generator: torch.Generator) -> int:
    """One integer uniform in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator, device=generator.device))


def randperm(n: int, generator: torch.Generator) -> list:
    """A random order of range(n)."""
    return torch.randperm(n, generator=generator, device=generator.device).tolist()


def generator(seed: int, *key) -> torch.Generator:
    """A CPU generator seeded with `seed`, or with a stable digest of `seed` and `key` (e.g. ("frame", 5)):
    independent streams for the parts of a run, the same in every process."""
    if key:
        digest = hashlib.sha256(repr((int(seed), *key)).encode()).digest()
        seed = int.from_bytes(digest[:8], "little") >> 1
    return torch.Generator("cpu").manual_seed(int(seed))
