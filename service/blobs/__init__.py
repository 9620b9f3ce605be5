"""Blob lifetimes: which rows hold a stored blob, and deleting the ones none holds."""
