"""The agent tunnel: many byte streams over one outbound WebSocket (frames, flow control, bridging)."""
