"""The sampler: the DDPM noise schedule, DDIM sampling and inversion, the Denoiser that brings a sampler's
inputs to a UNet call, the seeded random draws (`rng`), and txt2img / img2img built on them.
"""
