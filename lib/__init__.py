"""Generative models on MNIST: the thin package behind the tier notebooks."""
