"""The data-parallel implementation; the public names are `gx.X` and `gradxform.parallel`."""
