"""``fastdist-combine``: apply several combiners to the same saved worker states.

    fastdist save_states=true validation_fraction=0.1 combiner=weight_avg workers=4
    fastdist-combine outputs/<date>/<time> weight_avg ensemble soup_greedy aligned_avg
    fastdist-combine RUN weight_avg model.factory=my_pkg.models:make   # a JAX model's run

The run's own config (``.hydra/`` in its output directory) rebuilds the exact data
split the workers trained on; each combiner is finalized on the saved parameters and
scored on the test set; results go to ``combine_metrics.json`` in the run directory
(one entry per combiner) and to the console as a table.

The run directory is untrusted input: every file in it is checked (the states file's
arrays and its hash of the split settings, the overrides), a damaged or edited one is a
one-line error with exit code 2, no code it names is imported (a JAX model's factory is
taken only from this command line: ``KEY=VALUE`` arguments are the user's own options,
applied to every combiner), and nothing is written anywhere but
``combine_metrics.json`` (no dataset cache, no temporary file left behind, never
through a link planted in the directory).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.errors import ConfigError, FastdistError

__all__ = ["main", "combine_saved"]


def combine_saved(
    run_dir: str | Path,
    combiners: list[str],
    diagnostics: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Metrics of each combiner in ``combiners`` on the states saved in ``run_dir``.

    The run directory is untrusted: its overrides may only choose fastdist's own
    options and set values (:mod:`fastdist.run.saved_overrides`), and only fastdist's
    own records are built from them. ``overrides`` are the user's own (the command
    line), applied last: options of the combiners, or the ``model.factory`` of a JAX
    model, which a run directory may not name.
    """
    from fastdist.combiners.exchange import Sync
    from fastdist.data.mnist1d import no_cache_writes
    from fastdist.run.combine import combine
    from fastdist.run.config_checks import validate
    from fastdist.run.preparation import prepare_data
    from fastdist.run.records import build_combiner, build_model
    from fastdist.run.saved_overrides import check_saved_overrides
    from fastdist.run.states import load_states, read_settings

    run_dir = Path(run_dir)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise ConfigError(f"{run_dir} is not a fastdist run directory (no .hydra/overrides.yaml)")
    settings = read_settings(run_dir)
    if settings["sync"] != Sync.NONE.value:
        raise ConfigError(
            f"the saved workers were trained with sync={settings['sync']}, so they hold one "
            "model; train with an end-of-training combiner (e.g. combiner=weight_avg)"
        )
    user_keys = frozenset(o.split("=", 1)[0].lstrip("+~") for o in overrides)
    saved = check_saved_overrides(_read_overrides(overrides_file), replaced=user_keys)
    base = [o for o in saved if not o.startswith("combiner")]
    results = {}
    data = model = states = None
    for name in combiners:
        cfg = _compose_untrusted([*base, f"combiner={name}", *overrides], overrides_file)
        validate(cfg)
        if data is None:
            _check_factory_named(cfg, user_keys)
            _check_same_run(cfg, settings["split_hash"], overrides_file)
        combiner = build_combiner(cfg.combiner, trusted=False)
        if combiner.sync is not Sync.NONE:
            raise ConfigError(
                f"{name} combines during training; fastdist-combine applies combiners that "
                "act at the end (weight_avg, ensemble, soup_uniform, soup_greedy, ...)"
            )
        if data is None:
            with no_cache_writes():  # nothing written outside the run directory
                data = prepare_data(
                    cfg, int(cfg.workers), settings["validation_fraction"], trusted=False
                )
            shape, classes = data.dataset.input_shape, data.dataset.n_classes
            model = build_model(cfg.model, shape, classes, trusted=False)
            # The rows are read only now, with the shapes this run must have.
            states = load_states(run_dir, int(cfg.workers), model.layout.size)
        if combiner.check_model is not None:
            combiner.check_model(model)
        results[name] = combine(
            combiner,
            states["worker_params"],
            model,
            data,
            states["samples_seen"],
            int(cfg.seed),
            diagnostics=diagnostics,
            base=states["base"],
        )
    return results


def _check_same_run(cfg, saved_hash: str, overrides_file: Path) -> None:
    from fastdist.run.states import split_hash

    if split_hash(cfg) != saved_hash:
        raise ConfigError(
            f"{overrides_file} does not match the saved states: workers, seed, "
            "validation_fraction, dataset or model were changed after training, which "
            "would change the data split or the meaning of the parameters"
        )


def _check_factory_named(cfg, user_keys: frozenset[str]) -> None:
    """A JAX model is code: it is imported only when the user names it here."""
    if cfg.model.get("factory") and "model.factory" not in user_keys:
        raise ConfigError(
            "the run's model is a JAX model (model.factory): fastdist-combine imports no "
            "code a run directory names; name it yourself: model.factory=package.module:make"
        )


def _read_overrides(path: Path) -> list[str]:
    """``.hydra/overrides.yaml``: a bounded list of printable ``key=value`` strings, or a
    one-line error (the one reader of a run's overrides, :mod:`.run_overrides`: plain
    YAML, never interpolated; OmegaConf would resolve ``${...}`` as the items are read)."""
    from fastdist.cli.run_overrides import read_overrides
    from fastdist.cli.run_results import BadFile

    try:
        return list(read_overrides(path.parent.parent) or ())
    except BadFile as exc:
        raise ConfigError(str(exc)) from None


def _compose_untrusted(overrides: list[str], source: Path):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fastdist.run.config import compose

    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"{source}: its overrides do not compose ({detail})") from None


def _write_atomic(path: Path, text: str) -> None:
    from fastdist.engine.files import replacing

    with replacing(path) as fh:
        fh.write(text.encode())


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("fastdist-combine", __doc__)
    parser.add_argument("run_dir", help="output directory of a run made with save_states=true")
    parser.add_argument(
        "combiners",
        nargs="+",
        metavar="COMBINER|KEY=VALUE",
        help="combiner names (conf/combiner/*.yaml), and options of your own applied to "
        "each (combiner.density=0.2, model.factory=pkg.module:make)",
    )
    parser.add_argument("--diagnostics", action="store_true", help="add per-member metrics")
    args = parser.parse_args(argv)
    names = [item for item in args.combiners if "=" not in item]
    overrides = [item for item in args.combiners if "=" in item]
    if not names:
        parser.error("name at least one combiner")
    out = Path(args.run_dir) / "combine_metrics.json"
    try:
        results = combine_saved(args.run_dir, names, args.diagnostics, overrides)
        _write_atomic(out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    except FastdistError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; nothing written", 130)
    except OSError as exc:  # a read-only run directory, a full disk
        where = exc.filename or out
        _fail(f"cannot write {where}: {exc.strerror or exc}", 2)
    except Exception as exc:
        from hydra.errors import HydraException

        if os.environ.get("FASTDIST_DEBUG"):
            raise
        if isinstance(exc, HydraException):
            _fail(str(exc), 2)
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (run with FASTDIST_DEBUG=1 for the traceback)",
            1,
        )
    print(f"{'combiner':<16} {'test_accuracy':>13} {'test_loss':>10}")
    for name, metrics in results.items():
        print(f"{name:<16} {metrics['test_accuracy']:>13.4f} {metrics['test_loss']:>10.4f}")
    print(f"written to {out}")


def _fail(message: str, code: int):
    line = " ".join(message.split()) or "failed"
    sys.stderr.write(f"fastdist-combine: error: {line}\n")
    raise SystemExit(code) from None


if __name__ == "__main__":
    main()
