"""``python -m vdrnn.bench``: see ``vdrnn.bench``."""

from absl import app

from vdrnn.bench.driver import main

if __name__ == "__main__":
  app.run(main)
