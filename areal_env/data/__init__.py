"""Task sources: synthetic tasks made in code and loaders for local data files."""
