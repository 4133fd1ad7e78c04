"""schedulerd-router: the HTTP reverse proxy in front of inference services (docs/serve.md)."""
