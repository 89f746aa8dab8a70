"""A peer's durable state: the SQLite database, its link, request, post and execution
tables, and group commit (what must wait for the disk)."""
