"""Command-line apps (Hydra) that compose a typed sslprune.core.schema.Config and hand it to the library.

Installed as `sslprune.launch` (pyproject.toml maps this folder into the package)."""
