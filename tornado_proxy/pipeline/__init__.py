"""tornado_proxy.pipeline.handler."""
