"""tornado_proxy.accounts.file."""
