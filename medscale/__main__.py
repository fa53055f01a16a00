"""`python -m medscale`: the `medscale` command, where the console script is not on PATH."""
from medscale.cli import main

main()
