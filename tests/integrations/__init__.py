"""The client integrations against real libraries and servers (collected with --integrations)."""
