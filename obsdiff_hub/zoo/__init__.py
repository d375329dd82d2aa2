"""The zoo: versioned recipes, recipe runs, resumable progress, model cards, the Hub."""
