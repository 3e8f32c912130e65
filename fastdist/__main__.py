from fastdist.cli.entry import fastdist

fastdist()
