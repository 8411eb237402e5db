"""Mixture-of-experts modules."""
