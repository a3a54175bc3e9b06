"""jobsd."""
