"""Files: atomic writes and locks, model files (checkpoints), the JSON schemas read back, and a fitted model's records."""
