"""Secrets: where a value comes from (providers), how it is kept (the local encrypted store), how
it reaches a service (its environment, at start), and how it is kept out of everything else."""
