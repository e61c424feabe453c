"""The upstream side: forwarding, header hygiene, the gateway's own credentials (U1-U4)."""
