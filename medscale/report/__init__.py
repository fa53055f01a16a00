"""Reports from the registry (`medscale report JOB... | SWEEP`): seed-002-style tables, curves with the runs
overlaid, Markdown + one self-contained HTML page (`build`); and the pairing of stored benchmark results against
their base (`results`), which the sweep leaderboard shares."""
