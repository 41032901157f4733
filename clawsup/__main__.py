from clawsup.entrypoint import main

main()
