from fastdist.cli import main

main()
