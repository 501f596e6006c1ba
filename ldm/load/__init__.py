"""The loaders: reading weight files (safetensors, state-dict .pth), the weights catalog and its downloads,
and filling the networks of `ldm.nets` from them strictly (keys and shapes).
This file imports nothing, so `ldm.load.weights` loads without torch (the `pose-detect` command relies on it).
"""
