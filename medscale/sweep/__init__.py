"""Sweeps: a grid of trials (each a job of kind `trial`: train, then eval) scheduled by Ray Tune or SLURM, ranked on a
leaderboard beside their base models.

- `spec`: the sweep definition (YAML, or a recipe + --grid) and its deterministic expansion into trials.
- `trial`: the trial entry (`python -m medscale.sweep RECIPE ...`), what every trial process runs.
- `tune`: the one driver: registers the sweep and its trials, skips finished ones, submits the rest through a
  launcher, on Ray Tune (local Ray, or a cluster; optional ASHA early stopping on eval loss; the bases evaluated
  once) or as one SLURM array.
- `board`: the leaderboard (eval loss, a benchmark's accuracy with its interval, or the control-set regression),
  every fine-tune worse than its own base marked.
"""
