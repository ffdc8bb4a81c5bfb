"""``python -m launch.bench``: see ``launch.bench``."""

from absl import app

from launch.bench.driver import define_flags, main

if __name__ == "__main__":
  define_flags()
  app.run(main)
