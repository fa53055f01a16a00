"""The job record, torch-free: what a job is on disk and in the registry, shared by training, evaluation, sweeps
and every launcher.

- `record`: an output dir's file names, atomic writes, the journal (`medscale_job.json`) and the typed run summary.
- `checkpoint`: the verified-checkpoint protocol (manifest written last; every file checksummed).
- `stop`: the process-wide stop flag that SIGTERM / SIGUSR1 / a cancel set.
- `client`: the registry as a running job sees it (typed calls; never raises).
- `attempt`: one attempt of a job as a context manager (journal + registry + heartbeat + exit status).
- `launch`: the entry a launcher runs and the launcher protocol (prepare -> submit -> wait).
- `ops`: list / show / resume / cancel / sync / gc, returning data (the CLI renders it).
- `resolve`: a model or job reference -> the weights to load (eval, compare, chat, export).

Nothing here imports torch, transformers or a launcher module; `medscale jobs list` starts in about a second.
"""
