"""``python -m bnfold`` and the ``bnfold`` command: the same command line as the Rust binary,
run in this process, with the same output and exit codes."""

from __future__ import annotations

import sys

from bnfold import _native


def main() -> None:
    """Runs the command line on ``sys.argv`` and exits with its code."""
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(_native.main(["bnfold", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
