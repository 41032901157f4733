from clawsup.cli import main

main()
