"""Fixed, documented weights for the README's two-layer gallery picture.

Layer 1 (conv1.npy, 4 x 1 x 7 x 7): Gabor-like filters, an even cosine carrier
(wavelength 5 px) under a Gaussian (sigma 1.8 px), at 0, 45, 90 and 135 degrees,
each with zero mean, so that each answers edges and bars across its direction.
Layer 2 (conv2.npy, 2 x 4 x 5 x 5): two filters that span those four maps:
map 0 sums the horizontal and vertical responses ("axis-aligned structure"),
map 1 the two diagonals ("diagonal structure"), each over a 5 x 5 box.
Biases: conv1_bias.npy is -10 for every map (ReLU then keeps only clear responses).

Run from the repository root: python sample_images/gallery/make_layers.py
"""

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def gabor(theta_deg: float, size: int = 7, wavelength: float = 5.0, sigma: float = 1.8):
    r = np.arange(size) - size // 2
    y, x = np.meshgrid(r, r, indexing="ij")
    t = np.deg2rad(theta_deg)
    u = x * np.cos(t) + y * np.sin(t)
    g = np.exp(-(x**2 + y**2) / (2 * sigma**2)) * np.cos(2 * np.pi * u / wavelength)
    g -= g.mean()
    return g / np.abs(g).sum()


conv1 = np.stack([gabor(a)[None] for a in (0, 45, 90, 135)]).astype(np.float32)
conv1_bias = np.full(4, -10, np.float32)
box = np.ones((5, 5), np.float32) / 25
conv2 = np.zeros((2, 4, 5, 5), np.float32)
conv2[0, 0] = conv2[0, 2] = box  # 0 and 90 degrees
conv2[1, 1] = conv2[1, 3] = box  # 45 and 135 degrees
np.save(HERE / "conv1.npy", conv1)
np.save(HERE / "conv1_bias.npy", conv1_bias)
np.save(HERE / "conv2.npy", conv2)
