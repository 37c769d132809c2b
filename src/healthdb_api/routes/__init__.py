"""Resource routes; every handler works inside the caller's clinic scope."""
