"""Core: the task, budgets, targets, the run's manifest and file hashing — what every stage shares."""
