"""Latent spaces: where a flow's data live and how its samples become images.

A run's space comes from its config (`space_of(config)`): pixels (the default: K-level images, dequantised
on device, bits/dim), or the latents of an autoencoder (`config.latent.autoencoder`: continuous latents
encoded once by `--mode=encode`, noise-augmented on device, decoded to images for every grid, judge and
API sample, likelihoods in nats per latent dimension).
"""

from ntm_jax.latents.autoencoders import LoadedAutoencoder, load_autoencoder
from ntm_jax.latents.space import LatentSpace, PixelSpace, space_of

__all__ = ["LatentSpace", "LoadedAutoencoder", "PixelSpace", "load_autoencoder", "space_of"]
