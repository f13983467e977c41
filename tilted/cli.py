"""Command line: ``tilted demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tilted", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="sample the DAS Figure-1 toy: pretrained, exact tilted target, engines")
    demo.add_argument("--out", default="outputs", help="folder for the figure (default: outputs)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from tilted.demo import run_demo

        run_demo(out=args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
