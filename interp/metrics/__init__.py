"""Measuring a sequence of frames: feature spaces (FID's Inception, LPIPS, CLIP), the path metrics of Table 1
and perceptual re-timing, and their plots."""
