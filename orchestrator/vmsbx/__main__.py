from vmsbx.cli.main import main

main()
