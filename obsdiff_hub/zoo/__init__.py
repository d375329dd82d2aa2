"""The zoo: versioned recipes, recipe runs, resumable progress, evaluation and its metrics,
benchmarks, model cards, and publishing on the Hub."""
