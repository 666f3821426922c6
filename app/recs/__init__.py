"""Recommendations: the recommender, its Function calls and keys, the item model, the refresh
worker, experiments."""
