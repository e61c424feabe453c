"""The edge: what is answered before any token is looked at (challenge, metadata, origin, health)."""
