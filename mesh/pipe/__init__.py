"""The pipe and what drives it: folders, the inbox, the outbox, the links driver, and
message bodies."""
