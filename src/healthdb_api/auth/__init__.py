"""Authentication: passwords, tokens, brute-force protection and the auth routes."""
