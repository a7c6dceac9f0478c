from metanlp_cli.cli import main

main()
