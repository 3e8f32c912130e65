from fastdist.cli.main import main

main()
