"""Training: `run(recipe)` (medscale.train.run), its callbacks, the checkpoint lifecycle, tracking and report.

Nothing is imported here, so the light modules (checkpoint, lifecycle) load without torch and transformers:
`medscale jobs ...` starts in about a second.
"""
