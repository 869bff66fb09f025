"""HTTP plumbing under every handler: reading bodies, writing answers, what a connection may hold."""
