"""tornado_proxy.observability."""
