"""Latent diffusion models for the ``edit`` task (InstructPix2Pix), built from diffusers' parts.

``parts.py`` opens a Stable Diffusion directory and widens its UNet's input;
``objective.py`` is the training step; ``tiny.py`` writes a random tiny
Stable Diffusion for tests and CPU recipes.
"""
