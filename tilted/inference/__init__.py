"""Inference engines: sequential Monte Carlo, importance sampling (guidance and search to come)."""
