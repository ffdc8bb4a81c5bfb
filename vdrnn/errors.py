"""One clear line for bad input: ``UserError`` and the wrapper every entry point uses."""

from __future__ import annotations

import sys


class UserError(Exception):
  """Bad input (config, data, workdir): printed as one line, exit status 2."""


def run_main(main) -> None:
  """Calls ``main()``; a ``UserError`` (or a ValueError raised by config validation)
  becomes ``error: <message>`` on stderr and exit status 2, without a traceback."""
  try:
    main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted: the last checkpoint in the workdir is intact; re-run the same command to resume",
          file=sys.stderr)
    sys.exit(130)
