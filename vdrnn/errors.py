"""One clear line for bad input: ``UserError`` and the wrapper every entry point uses."""

from __future__ import annotations

import sys

from absl import flags


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
    print(
        "interrupted: the last checkpoint in the workdir is intact; re-run the same command to "
        "resume",
        file=sys.stderr)
    sys.exit(130)


def parse_flags(argv):
  """absl ``flags_parser`` for ``app.run``: a bad flag, config file or config field is one
  ``error:`` line and exit status 2 (absl and ml_collections would print a traceback)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - any parsing failure is the user's input
    chain, c = [], e
    while c is not None and len(chain) < 10:
      chain.append(c)
      c = c.__cause__ or c.__context__
    text = " ".join(str(e).split())
    if any(isinstance(c, (AttributeError, KeyError)) for c in chain):
      missing = " ".join(str(chain[-1]).split()).strip("\"'")
      overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
      field = next((a for a in overrides if missing in a.split(".")), None)
      field = field or (overrides[0] if overrides else "--config.<field>")
      text = (f"unknown config field ({field}: no field {missing!r}); "
              f"see the config file for its fields")
    elif "Traceback" in text:  # an exception raised inside the config file: keep its last line
      text = text.rsplit("Error: ", 1)[-1]
    print(f"error: {text[:500]}", file=sys.stderr)
    sys.exit(2)


def config_value(flag_holder):
  """The parsed config of a ``config_flags`` flag; a config file that failed to load
  (missing, or raising inside ``get_config``) becomes a ``UserError``."""
  try:
    value = flag_holder.value
    if value is not None:
      value.keys()  # a config file that failed to load raises here (ml_collections defers it)
    return value
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise UserError(f"cannot load the config: {lines[-1] if lines else e}") from None
