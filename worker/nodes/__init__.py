"""Built-in nodes, grouped by what they do. Importing this package registers them all."""

from worker.nodes import conditioning, image, latent, loaders, sampling, upscale

__all__ = ["conditioning", "image", "latent", "loaders", "sampling", "upscale"]
