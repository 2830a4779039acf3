"""rdbm_jax: Residual Diffusion Bridge Models for image restoration in JAX/Flax."""

__version__ = "0.1.0"
