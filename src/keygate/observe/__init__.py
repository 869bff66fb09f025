"""What the gateway remembers and says about traffic: per-provider stats, the access log, logging."""
