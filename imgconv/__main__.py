from imgconv.cli import main

main()
