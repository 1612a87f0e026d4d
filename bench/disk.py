"""Disk use of the embedded home: fresh, after the README's tour, after retiring what does not serve and `gc`.

In a new home: `modelroll up`'s three services in this process and the built-in digits model registered (fresh);
then the tour: `optimize digits -t "prune:0.5,distill,int8" -t int8`, a rollout of the pruned candidate
(shadow,1,5,25,50,100) under live labelled traffic until the controller decides (after the tour); then, with the
services still up, `modelroll models retire` of every variant that does not serve and `modelroll gc`, run as the
CLI a user runs (after gc). Prints each figure with its parts and the ratio to the fresh home.
Run: .venv/bin/python bench/disk.py [--step-seconds 60] [--abort-after-s S] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelroll.artifacts import ArtifactStore
from modelroll.db import OptimizationJobRow
from modelroll.jobs import OptimizationRequest, submit_job
from modelroll.settings import Settings
from modelroll_app import up
from modelroll_app.traffic import Traffic

TOKEN = "mr_bench_disk_token"
RECIPES = ("prune:0.5,distill,int8", "int8")
STEPS = "shadow,1,5,25,50,100"
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")


def disk_bytes(path: Path) -> int:
    """What `du` counts: allocated blocks of every file under `path`."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def parts(home: Path) -> str:
    names = {"database": [home / "modelroll.db", home / "modelroll.db-wal", home / "modelroll.db-shm"],
             "artifacts": [home / "artifacts"], "extracted": [home / "artifacts" / ".trees"],
             "build cache": [home / "cache"]}
    sizes = {}
    for name, paths in names.items():
        sizes[name] = sum(p.lstat().st_blocks * 512 if p.is_file() else disk_bytes(p) for p in paths if p.exists())
    sizes["artifacts"] -= sizes["extracted"]
    return ", ".join(f"{name} {size / 2**20:.1f}" for name, size in sizes.items())


def figure(label: str, home: Path, fresh: int | None = None) -> int:
    size = disk_bytes(home)
    ratio = f"  ({size / fresh:.2f}× fresh)" if fresh else ""
    print(f"{label:<26} {size / 2**20:7.1f} MiB{ratio}   [{parts(home)} MiB]", flush=True)
    return size


def cli(home: Path, *args: str) -> str:
    env = {**os.environ, "MODELROLL_HOME": str(home)}
    for name in ("MODELROLL_DATABASE_URL", "MODELROLL_REDIS_URL", "MODELROLL_ARTIFACTS_DIR"):
        env.pop(name, None)
    done = subprocess.run([str(Path(sys.executable).parent / "modelroll"), *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"modelroll {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-seconds", type=float, default=60.0, help="minimum duration of each rollout step")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--abort-after-s", type=float, default=None,
                        help="abort the rollout after this long: the baseline keeps serving (the worst case here)")
    parser.add_argument("--keep", action="store_true", help="keep the home folder and print where it is")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="modelroll-disk-")) / ".modelroll"
    settings = Settings(home=home, router_port=0, controller_port=0, admin_token=TOKEN, router_runner="subprocess",
                        log_level="WARNING")
    started = time.monotonic()
    services = up.start(settings)
    traffic = None
    try:
        from optimizer.baselines import register_builtin
        from optimizer.sources import digits_eval_set

        sessions = services.session_factory
        with sessions() as session, session.begin():
            register_builtin(session, ArtifactStore.from_settings(settings), "digits", home / "cache")
        fresh = figure("fresh (digits registered)", home)

        with sessions() as session:
            job_id = submit_job(session, services.channel, OptimizationRequest(model="digits", techniques=RECIPES),
                                settings.effective_artifacts_dir).id
        while True:
            with sessions() as session:
                job = session.get(OptimizationJobRow, job_id)
                assert job is not None
                if job.status in ("succeeded", "failed"):
                    break
            time.sleep(1)
        print(f"optimization job {job_id}: {job.status} ({job.message})", flush=True)
        inputs, labels = digits_eval_set()
        traffic = Traffic(services.router_url, "digits", inputs, labels, clients=args.clients)
        traffic.start()
        steps = [{"weight_pct": 0, "shadow": True, "min_duration_s": args.step_seconds}]
        steps += [{"weight_pct": float(w), "min_duration_s": args.step_seconds} for w in STEPS.split(",")[1:]]
        with httpx.Client(base_url=services.controller_url, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            candidate = next(v["name"] for v in client.get("/v1/models/digits/variants").json()["variants"]
                             if v["name"].startswith("prune"))
            r = client.post("/v1/rollouts", json={"model": "digits", "candidate": candidate, "steps": steps})
            r.raise_for_status()
            rollout = r.json()
            created = time.monotonic()
            while rollout["phase"] not in TERMINAL:
                time.sleep(1)
                rollout = client.get(f"/v1/rollouts/{rollout['id']}").json()
                if args.abort_after_s is not None and time.monotonic() - created > args.abort_after_s:
                    client.post(f"/v1/rollouts/{rollout['id']}/abort", json={"reason": "bench/disk.py --abort-after-s"},
                                headers={"If-Match": f'"{rollout["version"]}"'})
        traffic.stop()
        print(f"rollout {rollout['id']} of {candidate}: {rollout['phase']} after {traffic.stats.sent:,} requests "
              f"({traffic.stats.failed} failed): {rollout['reason']}", flush=True)
        toured = figure("after the tour", home, fresh)

        with sessions() as session:
            from modelroll import catalog

            [model] = catalog.list_models(session)
        retire = [v.name for v in model.variants if v.name != model.production and not v.retired]
        for variant in retire:
            cli(home, "models", "retire", "digits", variant, "--reason", "bench/disk.py: does not serve")
        print(f"retired {', '.join(retire)} (production: {model.production}); `modelroll gc`:", flush=True)
        for line in cli(home, "gc").splitlines():
            print(f"  {line}", flush=True)
        after = figure("after retire + gc", home, fresh)
        print(f"after the tour {toured / fresh:.2f}× fresh; after retire + gc {after / fresh:.2f}× fresh "
              f"(target ≤ 2×: {'met' if after <= 2 * fresh else 'NOT met'}); {time.monotonic() - started:.0f} s")
    finally:
        if traffic is not None:
            traffic.stop()
        services.stop()
        if args.keep:
            print(f"home kept at {home}")
        else:
            shutil.rmtree(home.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
