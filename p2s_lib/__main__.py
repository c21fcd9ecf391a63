"""`python -m p2s_lib <train|evaluate|predict|demo>`: the command line of chapter 12."""
from p2s_lib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
