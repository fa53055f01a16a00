"""Evaluation that tells the truth: benchmarks (bench), prompts (prompt), scoring (score), intervals and paired
verdicts (stats), typed results (result) and the stored ones paired again (stored), the forgetting guard (control),
`compare`, `chat`, and a Trainer callback for benchmarks at eval steps (callback). Importing the package is cheap;
torch loads with score/generate."""
