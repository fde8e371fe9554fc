"""Command-line apps (Hydra) that compose a typed sslprune.config.Config and hand it to the library."""
