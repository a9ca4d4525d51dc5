"""The `understudy` command: `main.py` builds the app (`understudy.cli.main:main` is the
console script); its commands' clients live beside it (`store_access`: the store directly or
through a running proxy; `review`; `corpus`). Importing a client module mounts no command."""
