"""What tests share: free ports, keyrings, the real `mesh` command as a subprocess, and
ASGI apps served on loopback. Test files import from here, never from each other."""
