"""Quality evaluation: AlpacaEval-format outputs from a live mesh and an offline pairwise judge (issue 11)."""
