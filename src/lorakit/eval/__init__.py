"""Evaluation: task metrics on generations, likelihood scores, drift from the base, and the report."""
