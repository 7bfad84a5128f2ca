from genlab.cli import main

main()
