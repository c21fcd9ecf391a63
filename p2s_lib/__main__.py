"""`python -m p2s_lib <train|evaluate|predict|demo>`: the command line of chapter 10."""
from p2s_lib.train import main

if __name__ == "__main__":
    raise SystemExit(main())
