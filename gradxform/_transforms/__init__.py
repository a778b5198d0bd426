"""The primitives: small transforms that chain into every named algorithm."""
