"""Checkpoints: orbax saves and restores, their checksums, rotation-safe reads, resume checks."""
