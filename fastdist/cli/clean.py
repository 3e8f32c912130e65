"""``fastdist-clean``: remove shared-memory segments left by runs that were killed."""

from __future__ import annotations

from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.engine.cleanup import remove_stale_segments, stale_segments
from fastdist.engine.shm import list_segments

__all__ = ["main"]


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("fastdist-clean", __doc__)
    parser.add_argument("--dry-run", action="store_true", help="only list what would go")
    args = parser.parse_args(argv)
    names = stale_segments() if args.dry_run else remove_stale_segments()
    verb = "would remove" if args.dry_run else "removed"
    for name in names:
        print(f"{verb} /dev/shm/{name}")
    live = len(list_segments()) - (len(names) if args.dry_run else 0)
    print(f"{verb} {len(names)} stale segment(s); {live} segment(s) of live runs left alone")


if __name__ == "__main__":
    main()
