"""What crosses the pipe: the file format, the messages in it, bounded decoding, crypto,
and file names."""
