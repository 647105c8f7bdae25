"""Ranking answers by a model's next-token probabilities (no generation): shared by the agent's `select` and eval."""
