"""Scenarios: what is measured (static batches today; serving under load next), beside engines/ (how a model runs)."""
