"""``fastdist-clean``: remove shared-memory segments left by runs that were killed."""

from __future__ import annotations

import os

from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.engine.cleanup import remove_stale_segments, stale_segments
from fastdist.engine.shm import LOCK_SUFFIX, SHM_DIR, list_segments

__all__ = ["main"]


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("fastdist-clean", __doc__)
    parser.add_argument("--dry-run", action="store_true", help="only list what would go")
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="also judge segments without a lock file (older fastdist) by their owner PID; "
        "only safe when no other container or PID namespace shares /dev/shm",
    )
    args = parser.parse_args(argv)
    clean = stale_segments if args.dry_run else remove_stale_segments
    names = clean(args.legacy)
    verb = "would remove" if args.dry_run else "removed"
    for name in names:
        print(f"{verb} /dev/shm/{name}")
    live = len(list_segments()) - (len(names) if args.dry_run else 0)
    print(f"{verb} {len(names)} stale segment(s); {live} segment(s) of live runs left alone")
    if not args.legacy:
        unlocked = [n for n in list_segments() if not os.path.exists(f"{SHM_DIR}/{n}{LOCK_SUFFIX}")]
        if unlocked:
            print(
                f"{len(unlocked)} of them have no lock file (an older fastdist); "
                "fastdist-clean --legacy judges those by their owner PID"
            )


if __name__ == "__main__":
    main()
