"""Same as the `fastdist-summarize` console script: `python experiments/summarize.py DIR`."""

from fastdist.cli.summarize import main

if __name__ == "__main__":
    main()
