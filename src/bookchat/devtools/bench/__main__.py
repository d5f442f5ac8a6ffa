"""`python -m bookchat.devtools.bench [--quick] ...`: the same as `bookchat bench`."""

import argparse
import sys

from bookchat.devtools.bench.args import register

parser = argparse.ArgumentParser(prog="bookchat")
register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(["bench", *sys.argv[1:]])
args.func(args)
