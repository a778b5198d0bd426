"""Wrappers and combinators: transforms built around other transforms."""
