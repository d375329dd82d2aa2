"""The embedded default: a tiny Stable Diffusion pipeline trained on procedural shapes.

``dataset`` draws captioned 32×32 images from a seed, ``train`` fits a VAE, a CLIP text
encoder and a UNet on them (CPU, minutes) plus a classifier used as the scorer, and the
weights ship in ``weights/`` inside the package.
"""
