"""Gauntlet's engine: pure PyTorch threat models, attacks, evaluation, training,
corruptions and model loading.

Imports nothing from ``service`` or ``worker``, nor any web, database or queue library.
"""
