"""Reports from the registry (`medscale report JOB... | SWEEP`): seed-002-style tables, curves with the runs
overlaid, Markdown + one self-contained HTML page (`build`); stored benchmark results are paired against their base
by `medscale.eval.stored`."""
