"""Behaviour logs -> weighted (user, item) pairs (aggregate.py) and the Transform's preprocessing."""
