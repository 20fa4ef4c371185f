"""The HTTP handlers, one module per client API or concern; the route table is ``app.ROUTES``."""
