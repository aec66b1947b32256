"""The command layer: the typer commands, one module per command group, and the terminal output they share."""
