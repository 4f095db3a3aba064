"""Built-in rules, one module per concern; every module here is imported by the registry."""
