"""The toy world: procedurally generated shapes (text-to-image) and scikit-learn digits (class-to-image),
tiny PixArt/DiT backbones of the real diffusers classes, and toy metrics (see docs/toy.md)."""
