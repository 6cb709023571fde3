"""`python -m c2rope`: see c2rope.cli.main."""
from c2rope.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
