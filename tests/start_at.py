"""``python -m tests.start_at T MODULE ARGS...``: ``MODULE.main(ARGS)`` at the wall-clock time T, its
imports done before, so that commands a test starts together meet at the same instant (the seconds
each spends importing would otherwise keep them apart)."""

from __future__ import annotations

import importlib
import sys
import time


def main() -> None:
    at, module, args = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    command = importlib.import_module(module)
    time.sleep(max(0.0, at - time.time()))
    sys.exit(command.main(args))


if __name__ == "__main__":
    main()
