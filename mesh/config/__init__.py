"""What a user writes: the roster, key files, and durations and sizes with units."""
