"""The `mesh` command and the tools it runs: `up`, `status`, `keygen`, `mirror`."""
