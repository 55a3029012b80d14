"""`python -m micromets` is the `micromets` command."""

from micromets.cli import main

main()
