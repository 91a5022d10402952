from perfpilot.cli import main

main()
