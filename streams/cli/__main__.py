"""``python -m streams.cli``: the ``otelpipe`` command."""
from streams.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
