"""`python -m iranker.cli`: the `iranker` command."""

from iranker.cli import main

main()
