"""The networks: plain nn.Module architectures whose module names are the checkpoints' keys (SD 2.x UNet,
VAE and text encoder, ControlNet, CLIP, Inception v3 for FID, LPIPS), their configs and the tokenizer.
Nothing here reads files, picks devices or samples: files here import only each other (and `ldm.errors`).
"""
