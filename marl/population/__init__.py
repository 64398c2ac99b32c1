"""Populations of policies: self-play against an opponent pool, ratings, exploitability
(`selfplay`, `pool`, `ratings`, `matrix`), and population-based training on Ray (`pbt`).

Layering: `marl.population` imports `marl.train` and hooks into the trainer through its
callbacks; `marl.train` never imports it."""
