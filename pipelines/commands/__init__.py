"""``pearl`` subcommands, one module each (see :data:`pipelines.cli.COMMANDS`)."""
