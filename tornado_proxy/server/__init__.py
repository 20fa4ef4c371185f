"""tornado_proxy.server.workers."""
