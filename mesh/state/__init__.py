"""A peer's durable state: the SQLite database, its link and request tables, and group
commit (what must wait for the disk)."""
