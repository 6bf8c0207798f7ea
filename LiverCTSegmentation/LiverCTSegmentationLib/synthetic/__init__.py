"""Synthetic data: CT-like images with exact ground truth, for tests, the demo sample and training.

Nothing here runs on a user's CT; the engine never imports this package.
"""
