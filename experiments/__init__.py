"""Experiments on the real package: the ablation grid in miniature (`ablation`) and the
exact-denoiser NFE toy (`exact_nfe`). benchmarks/ measures speed and memory; what these measure
is in experiments/results/ (benchmarks/RESULTS.md discusses it)."""
