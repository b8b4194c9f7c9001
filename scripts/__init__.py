"""Developer tooling: the local AWS endpoint, the demo driver."""
