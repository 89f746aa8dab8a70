"""The pure core: link state, received-state, presence, settling, the request lifecycle.

Standard library only, no I/O and no clock: time is passed in, decisions come out."""
