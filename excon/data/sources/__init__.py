"""Readers of the original dataset formats; each returns a RawDataset."""
