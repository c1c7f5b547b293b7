"""The ``slipstream`` command line.

Subcommands import what they need lazily, so ``slipstream simulate`` does not
load torch and ``slipstream train`` does not load dolfinx.

Errors in the user's input end in one line, ``slipstream: error: ...``, and
exit status 2. Under ``mpirun`` the failing rank aborts the whole job so that no
rank waits forever in a collective call.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

EXIT_INPUT_ERROR = 2

def _comm():
    try:
        import dolfinx_solver  # noqa: F401  (PyPI wheel: before petsc4py/mpi4py users)
    except ImportError:
        pass
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _say(comm, *args, **kwargs):
    if comm.rank == 0:
        print(*args, **kwargs, flush=True)


def cmd_simulate(args) -> int:
    from solver.simulate import run_simulation

    comm = _comm()
    summary = run_simulation(comm, args.config, args.out, overwrite=args.overwrite, quiet=args.quiet)
    stored = summary.get("store") or "no store (a mesh has no voxel fields)"
    _say(comm, f"done: {stored}; pictures in {args.out}/; ParaView: {summary.get('paraview')}")
    return 0


def cmd_demo(args) -> int:
    from coupling.demo import DEFAULT_MODEL, run_demo

    run_demo(_comm(), pathlib.Path(args.out), pathlib.Path(args.model or DEFAULT_MODEL))
    return 0


def cmd_campaign(args) -> int:
    from solver.campaign import run_campaign
    from solver.errors import SlipstreamError

    comm = _comm()
    try:
        run_campaign(comm, args.config, args.store, ranks_per_sample=args.ranks_per_sample, extend=args.extend,
                     quiet=args.quiet, coarsen=args.coarsen, constitutive=args.constitutive,
                     correct_in_loop=args.correct_in_loop)
    except SlipstreamError:
        raise
    except BaseException:
        # a bug on one rank must not leave the others waiting in a collective call forever
        if comm.size > 1:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        raise
    return 0


def cmd_inspect(args) -> int:
    import json

    from solver import campaign
    from solver.errors import StoreError

    if args.plot and args.sample is None:
        raise StoreError("--plot needs --sample I")
    if args.plot and not args.out:
        raise StoreError("--plot needs --out DIR for the pictures")
    info = campaign.inspect_store(args.store)
    print(json.dumps(info, indent=2) if args.json else campaign.format_inspect(info))
    if args.sample is not None:
        print(campaign.describe_sample(args.store, args.sample))
    if args.plot:
        for png in campaign.plot_sample(args.store, args.sample, args.out):
            print(f"wrote {png}")
    return 0


def cmd_fdm(args) -> int:
    from solver.fdm import describe, run_fdm

    comm = _comm()
    summary = run_fdm(comm, args.config, args.out, overwrite=args.overwrite)
    if comm.rank == 0:
        print(f"done: {describe(summary)}", flush=True)
        print(f"fields: {summary['fields']}; ParaView: {summary['paraview']}; pictures in {args.out}/", flush=True)
    return 0


def _train_config(args) -> dict:
    """The training YAML of ``--config`` (or nothing), with ``--epochs`` and ``--seed`` over it."""
    cfg = {}
    if args.config:
        from solver.config import load_yaml

        cfg = load_yaml(args.config)
    cfg.update({k: v for k, v in {"epochs": args.epochs, "seed": args.seed}.items() if v is not None})
    return cfg


def cmd_train(args) -> int:
    if args.learned_update:
        from solver.errors import ConfigError
        from surrogate.learned_update import train_learned_update

        if args.store or args.coarse or args.forecast or args.resume or args.in_loop or args.rollout_select:
            raise ConfigError("--learned-update trains on the physics kernel's own updates: --store, --coarse, "
                              "--forecast, --in-loop and --resume do not apply")
        train_learned_update(args.learned_update, args.out, epochs=args.epochs or 40, seed=args.seed or 0,
                             samples=args.samples or 80000, quiet=args.quiet)
        return 0
    if not args.store:
        from solver.errors import ConfigError

        raise ConfigError("--store is required (the campaign to learn from)")
    if args.in_loop:
        from solver.errors import ConfigError
        from surrogate.inloop import MAKE, train_state_correction

        given = [f"--{n}" for n in ("forecast", "physics", "resume", "model", "ensemble", "workers")
                 if getattr(args, n)]
        if given:
            raise ConfigError(f"--in-loop trains one state correction: {', '.join(given)} do(es) not apply")
        if not args.coarse:
            raise ConfigError(f"--in-loop needs --coarse (the coarse partner, then any DAgger stores): {MAKE}")
        cfg = _train_config(args)
        if args.rollout_select is not None:
            from coupling.inloop_select import select_by_rollout

            if args.rollout_select < 1:
                raise ConfigError(f"--rollout-select must be a positive number of samples, got {args.rollout_select}")
            cfg.setdefault("candidates", 6)
        train_state_correction(args.store, args.coarse, args.out, config=cfg, quiet=args.quiet)
        if args.rollout_select is not None:
            select_by_rollout(args.out, args.rollout_select, quiet=args.quiet)
        return 0
    if args.coarse and len(args.coarse) > 1:
        from solver.errors import ConfigError

        raise ConfigError("--coarse is given more than once; only --in-loop trains on several coarse stores")
    args.coarse = args.coarse[0] if args.coarse else None
    if args.forecast:
        from solver.errors import ConfigError
        from surrogate.forecast import train_forecast

        if args.coarse or args.resume:
            raise ConfigError("--forecast trains a forecast: --coarse and --resume do not apply")
        train_forecast(args.store, args.out, kind=args.forecast, physics=args.physics, config=_train_config(args),
                       quiet=args.quiet)
        return 0
    from surrogate.train import train

    overrides = {"model": args.model, "epochs": args.epochs, "ensemble": args.ensemble, "seed": args.seed,
                 "workers": args.workers}
    train(args.store, args.out, args.config, resume=args.resume, overrides=overrides, quiet=args.quiet,
          coarse=args.coarse)
    return 0


def cmd_predict(args) -> int:
    from coupling.whatif import run_predict

    run_predict(_comm(), args.model, args.microstructure, args.load, args.out, verify=args.verify,
                trust_threshold=args.trust_threshold, steps=args.steps, quiet=args.quiet)
    return 0


def cmd_couple_correct(args) -> int:
    from coupling.correct import run_correct

    run_correct(_comm(), args.model, args.microstructure, args.load, args.out, verify=args.verify,
                trust_threshold=args.trust_threshold, steps=args.steps, quiet=args.quiet, in_loop=args.in_loop)
    return 0


def cmd_couple_forecast(args) -> int:
    from coupling.forecast import run_forecast

    run_forecast(_comm(), args.model, args.microstructure, args.load, args.out, steps=args.steps, verify=args.verify,
                 trust_threshold=args.trust_threshold, quiet=args.quiet)
    return 0


def cmd_evaluate(args) -> int:
    from surrogate.evaluate import evaluate

    out = args.out or str(pathlib.Path(args.model) / "evaluation")
    evaluate(args.model, args.store, out, splits=args.split, plots=not args.no_plots, coarse=args.coarse)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slipstream", description="Surrogate-coupled crystal plasticity on DOLFINx.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="solve one microstructure under one load (serial or mpirun)")
    s.add_argument("config", help="YAML config (see docs/simulate.md)")
    s.add_argument("--out", required=True, help="run directory for results.zarr, fields.xdmf and PNGs")
    s.add_argument("--overwrite", action="store_true", help="replace an existing results.zarr in --out")
    s.add_argument("--quiet", action="store_true", help="no per-increment progress lines")
    s.set_defaults(func=cmd_simulate)

    f = sub.add_parser("fdm", help="field dislocation mechanics: stress field of dislocations or a Nye field")
    f.add_argument("config", help="YAML config (see docs/fdm.md)")
    f.add_argument("--out", required=True, help="run directory for fields.zarr, fields.xdmf and PNGs")
    f.add_argument("--overwrite", action="store_true", help="replace an existing fields.zarr in --out")
    f.set_defaults(func=cmd_fdm)

    d = sub.add_parser("demo", help="the embedded EBSD map: solver and shipped surrogate side by side, with pictures")
    d.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    d.add_argument("--model", help="surrogate model directory (default: the shipped one)")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("campaign", help="solve many samples (microstructure x load) into one resumable Zarr store "
                                        "(serial or mpirun)")
    c.add_argument("config", help="campaign YAML (see docs/campaign.md)")
    c.add_argument("--store", required=True, help="Zarr store: created if missing, resumed if it exists")
    c.add_argument("--ranks-per-sample", type=int, default=1, metavar="K",
                   help="ranks that share one sample (divides the number of ranks; default 1)")
    c.add_argument("--extend", action="store_true",
                   help="grow a store made by the same config with fewer samples")
    c.add_argument("--coarsen", type=int, metavar="K",
                   help="solve the same samples on a grid K times coarser (overrides microstructure.coarsen; "
                        "the training partner of a low-resolution correction, docs/coupling.md)")
    c.add_argument("--constitutive", choices=("crystal_plasticity", "elastic", "frozen_hardening"),
                   help="overrides solver.constitutive: 'elastic' (the elastic limit alone) or 'frozen_hardening' "
                        "(crystal plasticity with h0 = 0) solves the same samples with an incomplete physics: the "
                        "partner of a hybrid forecast, docs/coupling.md")
    c.add_argument("--correct-in-loop", metavar="MODEL",
                   help="with --coarsen K: hand the coarse solve's state corrected by MODEL (slipstream train "
                        "--in-loop) back to it at every output step; the store is the next DAgger round's training "
                        "data (docs/coupling.md)")
    c.add_argument("--quiet", action="store_true", help="no per-sample progress lines")
    c.set_defaults(func=cmd_campaign)

    cp = sub.add_parser("couple", help="the surrogate in the solver loop: low-resolution correction, hybrid forecasts")
    csub = cp.add_subparsers(dest="mode", required=True, metavar="MODE")
    cc = csub.add_parser("correct", help="solve k times coarser, correct to the fine grid with a learned model "
                                         "(serial or mpirun)")
    cc.add_argument("--model", required=True, help="low-resolution correction model directory (train --coarse)")
    cc.add_argument("--microstructure", required=True, help="map: .ang, .ctf, .npz, or STORE.zarr:INDEX")
    cc.add_argument("--load", required=True, help='"MODE STRAIN [x,y,z]", e.g. "tension 0.5%% [1,0,0]"')
    cc.add_argument("--out", required=True, help="output directory")
    cc.add_argument("--steps", type=int, default=10, help="load increments (= output steps; default 10)")
    cc.add_argument("--verify", action="store_true", help="also solve the fine grid and report the errors")
    cc.add_argument("--in-loop", metavar="STATE_MODEL",
                    help="in-loop mode: correct the coarse solve's plastic deformation and slip resistance with "
                         "STATE_MODEL (train --in-loop) at every step and go on from the corrected state")
    cc.add_argument("--trust-threshold", type=float, default=0.5,
                    help="below this trust the fine solve answers (default 0.5)")
    cc.add_argument("--quiet", action="store_true", help="no solver progress lines")
    cc.set_defaults(func=cmd_couple_correct)
    cf = csub.add_parser("forecast", help="hybrid physics-ML forecast over load increments (incomplete "
                                          "physics + learned residual; serial or mpirun)")
    cf.add_argument("--model", required=True, help="forecast model directory (train --forecast)")
    cf.add_argument("--microstructure", required=True, help="map: .ang, .ctf, .npz, or STORE.zarr:INDEX")
    cf.add_argument("--load", required=True, help='"MODE STRAIN [x,y,z]": the strain reached after --steps')
    cf.add_argument("--out", required=True, help="output directory")
    cf.add_argument("--steps", type=int, default=10, help="equal load increments to roll out (default 10)")
    cf.add_argument("--verify", action="store_true", help="also run the crystal-plasticity solver and report errors")
    cf.add_argument("--trust-threshold", type=float, default=0.5,
                    help="below this trust the crystal-plasticity solver answers (default 0.5)")
    cf.add_argument("--quiet", action="store_true", help="no solver progress lines")
    cf.set_defaults(func=cmd_couple_forecast)

    t = sub.add_parser("train", help="fit the surrogate ensemble to a campaign store (CPU, GPU, or under torchrun)")
    t.add_argument("--store", help="campaign Zarr store")
    t.add_argument("--out", required=True, help="model directory (checkpoints, model.json)")
    t.add_argument("--learned-update", metavar="MATERIAL",
                   help="train a learned constitutive update (return map) for a material preset, from the physics "
                        "kernel's own updates; use it with solver: {constitutive: learned, learned_model: DIR}")
    t.add_argument("--config", help="training YAML (see docs/surrogate.md); CLI flags override it")
    t.add_argument("--model", help="backbone: fno or unet")
    t.add_argument("--epochs", type=int)
    t.add_argument("--samples", type=int, help="physics updates to learn from (--learned-update; default 80000)")
    t.add_argument("--ensemble", type=int, help="number of independently seeded members")
    t.add_argument("--seed", type=int)
    t.add_argument("--workers", type=int, help="DataLoader workers per process")
    t.add_argument("--forecast", choices=("hybrid", "neural"),
                   help="train a forecast over load increments: hybrid (incomplete physics + learned residual, "
                        "needs --physics) or neural (the same network alone)")
    t.add_argument("--physics", metavar="STORE",
                   help="the store's physics partner (campaign --constitutive elastic or frozen_hardening), "
                        "for --forecast hybrid")
    t.add_argument("--coarse", metavar="STORE", action="append",
                   help="the store's coarse partner (campaign --coarsen K): train a low-resolution correction; "
                        "with --in-loop, repeat it for the DAgger stores (campaign --coarsen K --correct-in-loop M)")
    t.add_argument("--in-loop", action="store_true",
                   help="train an in-loop state correction (plastic deformation and slip resistance of the coarse "
                        "solve, handed back to it; solver: {correction_in_loop: DIR}) from --store and --coarse")
    t.add_argument("--rollout-select", type=int, metavar="N",
                   help="with --in-loop: choose the epoch (or no correction) by the error of N validation samples "
                        "solved coarse with the model in the loop (docs/coupling.md)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out (same config and store)")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("predict", help="what-if: fields, pictures and a trust score from the surrogate in seconds "
                                       "(the solver checks with --verify, and answers when trust is low)")
    w.add_argument("--model", required=True, help="model directory (e.g. surrogate/pretrained/default)")
    w.add_argument("--microstructure", required=True, help=".ang, .ctf, .npz, or STORE.zarr:INDEX (a 2-D map)")
    w.add_argument("--load", required=True, help="'MODE STRAIN [x,y,z]', e.g. 'tension 0.005 [1,0,0]' or 'shear 0.5%%'")
    w.add_argument("--out", required=True, help="output directory")
    w.add_argument("--verify", action="store_true", help="also run the solver and report the surrogate's errors")
    w.add_argument("--trust-threshold", type=float, default=0.5,
                   help="below this trust score the solver answers instead (default 0.5)")
    w.add_argument("--steps", type=int, default=10, help="output steps (default 10)")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, calibration and speed of a trained model on a store (JSON, PNGs)")
    e.add_argument("--model", required=True, help="model directory written by slipstream train")
    e.add_argument("--store", required=True, help="campaign Zarr store")
    e.add_argument("--coarse", metavar="STORE", help="the store's coarse partner (for a low-resolution correction model)")
    e.add_argument("--out", help="directory for evaluation.json and PNGs (default: MODEL/evaluation)")
    e.add_argument("--split", nargs="+", help="train validation test held_out all (default: test held_out "
                                              "validation on the training store, all on another)")
    e.add_argument("--no-plots", action="store_true", help="JSON only")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("inspect", help="counts, failures, sizes and config of a campaign store; plots of a sample")
    i.add_argument("store", help="campaign Zarr store")
    i.add_argument("--sample", type=int, metavar="I", help="describe sample I")
    i.add_argument("--plot", action="store_true", help="write PNGs of sample I (needs --sample and --out)")
    i.add_argument("--out", help="directory for the PNGs of --plot")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    from solver.errors import SlipstreamError

    try:
        return args.func(args)
    except SlipstreamError as exc:
        msg = " ".join(str(exc).split())
        if "mpi4py.MPI" not in sys.modules:  # torch-only commands (train, evaluate): no MPI to abort
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank fails alike: one line
                print(f"slipstream: error: {msg}", file=sys.stderr, flush=True)
            return EXIT_INPUT_ERROR
        comm = _comm()
        if comm.size == 1:
            print(f"slipstream: error: {msg}", file=sys.stderr, flush=True)
            return EXIT_INPUT_ERROR
        # Under mpirun all ranks usually fail alike: rank 0 speaks and ends the job
        # at once; a rank failing alone speaks after a moment, then ends it.
        if comm.rank != 0:
            time.sleep(2.0)
        print(f"slipstream: error: {msg}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let mpirun forward the line before the abort tears the job down
        comm.Abort(EXIT_INPUT_ERROR)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
