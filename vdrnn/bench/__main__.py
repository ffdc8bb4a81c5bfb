"""``python -m vdrnn.bench``: see ``vdrnn.bench``."""

from absl import app

from vdrnn.bench.driver import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
