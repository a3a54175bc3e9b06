"""Worker-side entry points: one module per system, each declaring the bench
jobs (``benchmarks.tasks``) the way that system wants them declared."""
