"""Adapters for training frameworks (optional extras)."""
