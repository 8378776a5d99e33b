"""The `vmsbx` command line: one thin module per verb."""
