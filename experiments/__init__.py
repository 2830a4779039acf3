"""Experiments on the real package: the ablation grid in miniature (`ablation`), the
exact-denoiser NFE toy (`exact_nfe`), the scaling study (`scaling`) and k-fold recipe comparisons
(`recipes`). benchmarks/ measures speed and memory; what these measure is in experiments/results/
and docs/."""
