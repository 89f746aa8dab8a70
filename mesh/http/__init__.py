"""HTTP on both sides of the pipe: the ingress callers use, the forwarder to the upstream,
and the poster of callbacks."""
