"""``fastdist-combine``: apply several combiners to the same saved worker states.

    fastdist save_states=true validation_fraction=0.1 combiner=weight_avg workers=4
    fastdist-combine outputs/<date>/<time> weight_avg ensemble soup_greedy aligned_avg

The run's own config (``.hydra/`` in its output directory) rebuilds the exact data
split the workers trained on; each combiner is finalized on the saved parameters and
scored on the test set; results go to ``combine_metrics.json`` in the run directory
(one entry per combiner) and to the console as a table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastdist.cli.help import command_parser, quiet_on_broken_pipe
from fastdist.errors import ConfigError, FastdistError

__all__ = ["main", "combine_saved"]


def combine_saved(run_dir: str | Path, combiners: list[str], diagnostics: bool = False) -> dict:
    """Metrics of each combiner in ``combiners`` on the states saved in ``run_dir``.

    The run directory is untrusted: its overrides may only set values of fastdist's
    own configs, and only fastdist's own records are built from them.
    """
    from omegaconf import OmegaConf

    from fastdist.combiners.base import Sync
    from fastdist.run.combine import combine
    from fastdist.run.config import compose
    from fastdist.run.preparation import prepare_data
    from fastdist.run.records import build_combiner, build_model, check_saved_overrides
    from fastdist.run.states import load_states

    run_dir = Path(run_dir)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.exists():
        raise ConfigError(f"{run_dir} is not a fastdist run directory (no .hydra/overrides.yaml)")
    states = load_states(run_dir)
    if states["sync"] != Sync.NONE.value:
        raise ConfigError(
            f"the saved workers were trained with sync={states['sync']}, so they hold one "
            "model; train with an end-of-training combiner (e.g. combiner=weight_avg)"
        )
    saved = check_saved_overrides([str(o) for o in OmegaConf.load(overrides_file)])
    base = [o for o in saved if not o.startswith("combiner")]
    results = {}
    data = model = None
    for name in combiners:
        cfg = compose([*base, f"combiner={name}"])
        combiner = build_combiner(cfg.combiner, trusted=False)
        if combiner.sync is not Sync.NONE:
            raise ConfigError(
                f"{name} combines during training; fastdist-combine applies combiners that "
                "act at the end (weight_avg, ensemble, soup_uniform, soup_greedy, ...)"
            )
        if data is None:
            data = prepare_data(cfg, int(cfg.workers), states["validation_fraction"])
            shape, classes = data.dataset.input_shape, data.dataset.n_classes
            model = build_model(cfg.model, shape, classes, trusted=False)
            if states["worker_params"].shape[1:] != (model.layout.size,):
                raise ConfigError(
                    f"the saved parameters have shape {states['worker_params'].shape}, but "
                    f"the run's model has {model.layout.size} parameters"
                )
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
        )
    return results


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("fastdist-combine", __doc__)
    parser.add_argument("run_dir", help="output directory of a run made with save_states=true")
    parser.add_argument("combiners", nargs="+", help="combiner names (conf/combiner/*.yaml)")
    parser.add_argument("--diagnostics", action="store_true", help="add per-member metrics")
    args = parser.parse_args(argv)
    try:
        results = combine_saved(args.run_dir, args.combiners, args.diagnostics)
    except FastdistError as exc:
        sys.stderr.write(f"fastdist-combine: error: {str(exc).splitlines()[0]}\n")
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        from hydra.errors import HydraException

        if isinstance(exc, HydraException):
            sys.stderr.write(f"fastdist-combine: error: {str(exc).splitlines()[0]}\n")
            raise SystemExit(2) from None
        raise
    out = Path(args.run_dir) / "combine_metrics.json"
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"{'combiner':<16} {'test_accuracy':>13} {'test_loss':>10}")
    for name, metrics in results.items():
        print(f"{name:<16} {metrics['test_accuracy']:>13.4f} {metrics['test_loss']:>10.4f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
