"""Stage pipelines run by the CLI: dump, train, inspect."""
