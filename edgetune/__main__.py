"""`python -m edgetune` runs the CLI."""

from edgetune.cli import main

main()
