"""The command line (`python -m app.cli`): one module per command group."""
