from medscale.cli import main

main()
