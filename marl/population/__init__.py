"""Populations of learners trained together (population-based training on Ray: `marl.population.pbt`)."""
