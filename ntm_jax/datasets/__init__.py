"""TFDS builders for the data sets that ship inside packages (built locally, nothing is downloaded)."""
