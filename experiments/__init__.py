"""Experiments that train and score many runs (issue 28): scaling study, k-fold recipes."""
