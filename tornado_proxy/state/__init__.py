"""tornado_proxy.state."""
