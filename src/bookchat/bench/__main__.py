"""`python -m bookchat.bench [--quick] ...`: the same as `bookchat bench`."""

from bookchat.bench.cli import main

main()
