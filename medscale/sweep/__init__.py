"""Sweeps: a grid of trials (each a job of kind `trial`: train, then eval) scheduled by Ray Tune, ranked on a
leaderboard beside their base models.

- `spec`: the sweep definition (YAML, or a recipe + --grid) and its deterministic expansion into trials.
- `trial`: the trial entry (`python -m medscale.sweep RECIPE ...`), what every trial process runs.
- `tune`: the driver: registers the sweep and its trials, skips finished ones, runs the rest on Ray Tune (local
  Ray, or a cluster), optional ASHA early stopping on eval loss, evaluates the bases once.
- `board`: the leaderboard (eval loss, a benchmark's accuracy with its interval, or the control-set regression),
  every fine-tune worse than its own base marked.
"""
