"""excon."""
