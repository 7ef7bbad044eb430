"""Experiments over many runs: sweeps (grids, explicit runs, layer-map searches) and their results."""
