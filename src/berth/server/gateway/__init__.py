"""The gateway: agent tunnels, and the routes under /s/<session-id>/ that reach sessions through them."""
