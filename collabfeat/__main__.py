from collabfeat.cli import main

main()
