"""Finding and verifying dataset files.

Search order for a dataset folder ``<name>/`` (e.g. ``ptb/``), first match wins:

1. the config field ``data_dir`` (``--config.data_dir=...``), if set;
2. the environment variable ``VDRNN_DATA``;
3. ``../shared/data`` beside the repository checkout (the development / CI layout);
4. ``./data`` under the current directory;
5. the download cache ``~/.cache/vdrnn`` (``$VDRNN_CACHE``), where files with a
   canonical public URL are fetched with sha256 verification (pooch).

Each file is checked against its known sha256 unless checksum verification is turned
off (``--config.verify_checksums=False``) for a corpus of your own.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import pooch

from vdrnn.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def candidates(data_dir: Optional[str]) -> list[Path]:
  out = []
  if data_dir:
    out.append(Path(data_dir).expanduser())
  if os.environ.get("VDRNN_DATA"):
    out.append(Path(os.environ["VDRNN_DATA"]).expanduser())
  out += [REPO_ROOT.parent / "shared" / "data", Path.cwd() / "data", cache_dir()]
  return out


def cache_dir() -> Path:
  return Path(os.environ.get("VDRNN_CACHE", Path.home() / ".cache" / "vdrnn")).expanduser()


def sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def find(name: str, files: dict[str, str], data_dir: Optional[str], *, verify: bool = True,
         urls: Optional[dict[str, str]] = None) -> Path:
  """Returns the folder ``<root>/<name>`` holding every file of ``files`` (path -> sha256).

  When no candidate holds them all and ``urls`` are known, downloads them into the cache
  with sha256 verification; otherwise raises one ``UserError`` saying what to put where.
  """
  roots = candidates(data_dir)
  if data_dir and not all((Path(data_dir).expanduser() / name / f).is_file() for f in files):
    # An explicit data_dir that lacks the files is an error, not something to look past.
    missing = [f for f in files if not (Path(data_dir).expanduser() / name / f).is_file()]
    raise UserError(
        f"data_dir={data_dir!r} has no {name}/{missing[0]}; put the files "
        f"{', '.join(files)} under {Path(data_dir).expanduser() / name}/ or unset data_dir")
  for root in roots:
    folder = root / name
    if all((folder / f).is_file() for f in files):
      if verify:
        for f, digest in files.items():
          if digest and sha256(folder / f) != digest:
            raise UserError(
                f"{folder / f} has the wrong sha256 (expected {digest}): the file is corrupt or a "
                "different corpus; replace it, or pass --config.verify_checksums=False to use "
                "your own"
            )
      return folder
  if urls:
    folder = download(name, files, urls)
    if folder is not None:
      return folder
  where = ", ".join(str(r / name) for r in roots)
  raise UserError(f"dataset {name!r} not found: put {', '.join(files)} in one of {where} "
                  f"(or set VDRNN_DATA=/path/to/data, or --config.data_dir)")


def download(name: str, files: dict[str, str], urls: dict[str, str]) -> Optional[Path]:
  """Fetches ``files`` into ``cache_dir()/name`` with pooch (sha256-checked); None without a
  network."""
  folder = cache_dir() / name
  try:
    for f, digest in files.items():
      pooch.retrieve(urls[f],
                     known_hash=f"sha256:{digest}" if digest else None,
                     fname=f,
                     path=folder,
                     progressbar=True)
  except ValueError as e:  # pooch: hash mismatch
    raise UserError(f"download of {name} failed its checksum ({str(e).splitlines()[0]})") from None
  except Exception:  # no network, DNS failure, HTTP error
    return None
  return folder
