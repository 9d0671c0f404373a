"""The HTTP API and dashboard server (`conveyor serve`): reads the same database and acts through
the same agent as the CLI; never a second implementation of a deploy."""
