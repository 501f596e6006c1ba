"""Every random draw goes through ldm.sample.rng: drawn on the generator's (CPU) device, the same on every device."""
import re
from pathlib import Path

import torch

from ldm.sample import rng
from ldm.sample.ddim import DDIM
from ldm.sample.schedule import NoiseSchedule

ROOT = Path(__file__).resolve().parents[1]
DRAWS = re.compile(r"torch\.(randn|rand|randint|randperm|normal|bernoulli|multinomial)\(|\.(normal_|uniform_)\(|_like\(")


def test_no_random_draw_outside_the_helper():
    sources = [p for d in ("ldm", "interp", "pose") for p in (ROOT / d).rglob("*.py") if p.name != "rng.py"]
    code = lambda line: re.sub(r"`[^`]*`|(zeros|ones|full|empty)_like\(", "", line)  # noqa: E731 (quoted names in docs)
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in sources for n, line in enumerate(p.read_text().splitlines(), 1)
                 if DRAWS.search(code(line))]
    assert offenders == []


def test_draws_are_made_on_the_cpu_and_moved():
    g = rng.generator(0)
    x = rng.randn((2, 3), g, device="meta")  # a device a CPU generator cannot draw on
    assert x.device.type == "meta" and x.shape == (2, 3)
    assert torch.equal(rng.randn((2, 3), rng.generator(5)), torch.randn((2, 3), generator=torch.Generator().manual_seed(5)))


def test_keyed_generators_and_per_row_draws():
    a = rng.randn((1, 4), rng.generator(0, "frame", 3))
    assert torch.equal(a, rng.randn((1, 4), rng.generator(0, "frame", 3)))
    assert not torch.equal(a, rng.randn((1, 4), rng.generator(0, "frame", 4)))
    assert not torch.equal(a, rng.randn((1, 4), rng.generator(1, "frame", 3)))
    rows = rng.randn((2, 4), [rng.generator(0, "frame", 3), rng.generator(0, "frame", 4)])
    assert torch.equal(rows[:1], a)


def test_ddim_eta_draws_through_the_helper_on_any_device():
    sampler = DDIM(NoiseSchedule(), "eps", 10, eta=1.0)
    x = torch.zeros(1, 4, 2, 2, device="meta")
    x_prev, _ = sampler.step(torch.zeros_like(x), x, 5, rng.generator(0))  # a CPU generator, a non-CPU latent
    assert x_prev.device.type == "meta"
