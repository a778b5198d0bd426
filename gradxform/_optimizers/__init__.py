"""The named algorithms, each a short chain of primitives."""
