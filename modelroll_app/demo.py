"""`modelroll demo`: the whole story in one process on the embedded default.

Build (or load the cached) digits model, optimize it into a good candidate (pruned + distilled + INT8)
and an over-pruned one, start worker, controller and router, drive real labelled traffic through the
V2 API with labels sent back late, and let the controller decide each rollout from its statistics.
Nothing about the outcome is scripted: the demo only waits and reports what the controller recorded.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from modelroll.db import OptimizationJobRow, RolloutEventRow, RolloutRow
from modelroll.errors import Unavailable
from modelroll.live import open_channel
from modelroll.settings import Settings
from modelroll.types import Criteria, Step, step_to_dict
from modelroll_app import up
from modelroll_app.traffic import Traffic

MODEL = "digits"
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How long and how hard the demo runs; the defaults finish in a few minutes on 2 cores."""

    good_recipe: str = "prune:0.5,distill,int8"
    # Pruned harder without fine-tuning; optimized under a loose 10-point budget, so it is built as asked,
    # then held to the default 2-point gate on live traffic.
    bad_recipe: str = "prune:0.6,int8"
    bad_offline_accuracy_budget: float = 0.10
    batch_sizes: tuple[int, ...] = (1, 32)
    steps: tuple[Step, ...] = (
        Step(weight_pct=0, shadow=True, min_duration_s=5, min_samples=300),
        Step(weight_pct=10, min_duration_s=5, min_samples=300),
        Step(weight_pct=50, min_duration_s=5, min_samples=300),
        Step(weight_pct=100, min_duration_s=5, min_samples=300),
    )
    clients: int = 3
    feedback_delay_s: float = 1.0
    rollout_timeout_s: float = 240.0
    job_timeout_s: float = 600.0


@dataclass
class Decision:
    rollout_id: int
    candidate: str
    phase: str
    after_s: float
    why: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class DemoOutcome:
    decisions: list[Decision]
    requests: int
    failed_requests: int
    labels_joined: int
    status_url: str


def demo_settings(settings: Settings, router_port: int | None = None, controller_port: int | None = None) -> Settings:
    """The embedded mode in a fresh `home/demo` database and artifact store (a store belongs to one database:
    `gc` deletes what its database does not name); the trained model's cache is kept between runs."""
    demo_dir = settings.home / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    update: dict[str, Any] = {
        "database_url": f"sqlite:///{(demo_dir / 'modelroll.db').resolve()}", "redis_url": "",
        "artifacts_dir": demo_dir / "artifacts", "admin_token": "mr_demo_" + secrets.token_urlsafe(16),
        "allow_anonymous_viewer": True, "router_host": "127.0.0.1", "controller_host": "127.0.0.1",
        "reconcile_interval_s": min(settings.reconcile_interval_s, 1.0), "job_visibility_timeout_s": 30.0,
        # Each variant in its own process (the default, kept even when MODELROLL_ROUTER_RUNNER says inline): its
        # memory is measured exactly, which the memory gate needs; inline, memory is "not measurable here" and holds.
        "router_runner": "subprocess",
    }
    if router_port is not None:
        update["router_port"] = router_port
    if controller_port is not None:
        update["controller_port"] = controller_port
    return settings.model_copy(update=update)


class Demo:
    def __init__(self, settings: Settings, config: DemoConfig, console: Console) -> None:
        self.settings = settings
        self.config = config
        self.console = console
        self.channel = open_channel(settings)
        self.services: list[up.Services] = []
        self.traffic: Traffic | None = None
        self.controller_url = ""

    # --- optimize ---------------------------------------------------------------------------------

    def optimize(self) -> tuple[str, str]:
        """Register the digits model, run both optimization jobs through the worker; returns (good, bad)."""
        from modelroll.artifacts import ArtifactStore
        from modelroll.jobs import OptimizationRequest, submit_job
        from optimizer.baselines import register_builtin
        from optimizer.jobs import load_report
        from optimizer.report import to_rich

        self.services.append(up.start(self.settings, router=False, controller=False, worker=True,
                                      channel=self.channel))
        sessions = self.services[-1].session_factory
        store = ArtifactStore.from_settings(self.settings)
        self.console.print("[bold]1. The model in production[/]: a digits classifier trained on scikit-learn's "
                           "load_digits (built once, then cached)")
        with sessions() as session, session.begin():
            register_builtin(session, store, MODEL, self.settings.home / "cache")
        requests = [
            ("good", OptimizationRequest(model=MODEL, techniques=(self.config.good_recipe,),
                                         batch_sizes=self.config.batch_sizes)),
            ("over-pruned", OptimizationRequest(
                model=MODEL, techniques=(self.config.bad_recipe,), batch_sizes=self.config.batch_sizes,
                criteria=Criteria(accuracy_drop_max=self.config.bad_offline_accuracy_budget))),
        ]
        job_ids: dict[str, int] = {}
        with sessions() as session:  # submit_job commits the row itself, then enqueues
            for label, request in requests:
                job_ids[label] = submit_job(session, self.channel, request,
                                            self.settings.effective_artifacts_dir).id
        self.console.print("[bold]2. Optimize[/]: one job per candidate; each variant measured in its own fresh "
                           "process (latency, memory, size, CPU, accuracy)")
        self._follow_jobs(sessions, job_ids)
        variants: dict[str, str] = {}
        with sessions() as session:
            for label, job_id in job_ids.items():
                report = load_report(session, job_id)
                for table in to_rich(report):
                    self.console.print(table)
                built = [c.variant for c in report.candidates if c.variant]
                if report.status != "succeeded" or not built:
                    raise Unavailable(f"optimization job {job_id} ({label}) did not build its candidate: "
                                      f"{report.error or 'no candidate'}")
                variants[label] = str(built[0])
        return variants["good"], variants["over-pruned"]

    def _follow_jobs(self, sessions: Callable[[], Any], job_ids: dict[str, int]) -> None:
        deadline = time.monotonic() + self.config.job_timeout_s
        with Progress(TextColumn("{task.fields[label]:>12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), TextColumn("{task.description}"), console=self.console) as progress:
            tasks = {label: progress.add_task("queued", total=100, label=label) for label in job_ids}
            while True:
                done = 0
                with sessions() as session:
                    for label, job_id in job_ids.items():
                        row = session.get(OptimizationJobRow, job_id)
                        progress.update(tasks[label], completed=row.progress * 100, description=row.message[:60])
                        done += row.status in ("succeeded", "failed")
                if done == len(job_ids):
                    return
                if time.monotonic() > deadline:
                    raise Unavailable(f"optimization did not finish within {self.config.job_timeout_s:.0f} s")
                time.sleep(0.5)

    # --- roll out ---------------------------------------------------------------------------------

    def serve(self) -> tuple[str, str]:
        services = up.start(self.settings, worker=False, channel=self.channel)
        self.services.append(services)
        self.controller_url = services.controller_url
        return services.router_url, services.controller_url

    def start_traffic(self, router_url: str) -> Traffic:
        from optimizer.sources import digits_eval_set

        inputs, labels = digits_eval_set()
        self.traffic = Traffic(router_url, MODEL, inputs, labels, clients=self.config.clients,
                               feedback_delay_s=self.config.feedback_delay_s)
        self.traffic.start()
        return self.traffic

    def rollout(self, candidate: str) -> Decision:
        headers = {"Authorization": f"Bearer {self.settings.admin_token}"}
        body = {"model": MODEL, "baseline": "baseline", "candidate": candidate,
                "steps": [step_to_dict(s) for s in self.config.steps]}
        with httpx.Client(base_url=self.controller_url, timeout=10.0, headers=headers) as client:
            response = client.post("/v1/rollouts", json=body)
            if response.status_code != 201:
                raise Unavailable(f"creating the rollout failed: {response.status_code} {response.text}")
            rollout_id = int(response.json()["id"])
            started = time.monotonic()
            self.console.print(f"   rollout {rollout_id}: {candidate} vs baseline — "
                               f"{self.controller_url}/rollouts/{rollout_id}")
            return self._watch(client, rollout_id, candidate, started)

    def _watch(self, client: httpx.Client, rollout_id: int, candidate: str, started: float) -> Decision:
        assert self.traffic is not None
        stats = self.traffic.stats
        with Progress(TextColumn("   {task.description}"), TimeElapsedColumn(), console=self.console,
                      transient=True) as progress:
            task = progress.add_task("starting")
            while True:
                data = client.get(f"/v1/rollouts/{rollout_id}").json()
                progress.update(task, description=(
                    f"{data['phase']:<11} step {data['step_index'] + 1}/{data['steps_total']} "
                    f"split {data['weights']} · {stats.sent} requests, {stats.labels_joined} labels joined, "
                    f"{stats.failed} failed"))
                if data["phase"] in TERMINAL:
                    break
                if time.monotonic() - started > self.config.rollout_timeout_s:
                    break
                time.sleep(0.5)
        return self._decision(rollout_id, candidate, time.monotonic() - started)

    def _decision(self, rollout_id: int, candidate: str, after_s: float) -> Decision:
        sessions = self.services[-1].session_factory
        with sessions() as session:
            row = session.get(RolloutRow, rollout_id)
            last = session.scalars(select(RolloutEventRow).where(RolloutEventRow.rollout_id == rollout_id)
                                   .order_by(RolloutEventRow.seq.desc())).first()
            # A rollout still running shows its latest look (what it waits on), an ended one its decision's evidence.
            source = (last.evidence or {}) if last is not None and row.phase in TERMINAL else (row.evaluation or {})
            evidence = [str(r.get("message", "")) for r in source.get("results", [])]
            return Decision(rollout_id, candidate, row.phase, after_s, row.last_reason, evidence)

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        for services in reversed(self.services):
            services.stop()
        self.channel.close()


def print_summary(console: Console, outcome: DemoOutcome) -> None:
    table = Table(title="What the controller decided, and why")
    for column in ("rollout", "candidate", "decision", "after", "why"):
        table.add_column(column, overflow="fold")
    for d in outcome.decisions:
        colour = "green" if d.phase == "promoted" else "red" if d.phase in ("rolled_back", "failed") else "yellow"
        table.add_row(str(d.rollout_id), d.candidate, f"[{colour}]{d.phase}[/]", f"{d.after_s:.0f} s", d.why)
    console.print(table)
    for d in outcome.decisions:
        if d.evidence:
            console.print(f"[bold]evidence of rollout {d.rollout_id}[/] ({d.candidate}):")
            for line in d.evidence:
                console.print(f"  · {line}")
    console.print(f"traffic: {outcome.requests} requests, {outcome.failed_requests} failed, "
                  f"{outcome.labels_joined} labels joined late through /v1/feedback")


def run(settings: Settings, config: DemoConfig, console: Console, *, keep_running: bool = False,
        on_ready: Callable[[Demo], None] | None = None) -> DemoOutcome:
    demo = Demo(settings, config, console)
    try:
        good, bad = demo.optimize()
        router_url, controller_url = demo.serve()
        console.print(f"[bold]3. Serve[/]: router {router_url}/v2 · status page [link]{controller_url}/[/link]")
        if on_ready is not None:
            on_ready(demo)
        demo.start_traffic(router_url)
        console.print("[bold]4. Roll out[/] on live traffic (real digits, labels 1 s late); the controller decides:")
        decisions = [demo.rollout(bad), demo.rollout(good)]
        traffic = demo.traffic
        assert traffic is not None
        outcome = DemoOutcome(decisions, traffic.stats.sent, traffic.stats.failed, traffic.stats.labels_joined,
                              f"{controller_url}/")
        print_summary(console, outcome)
        if keep_running:
            traffic.stop()
            console.print(f"services keep running: status {controller_url}/ · router {router_url}/v2 · "
                          f"admin token {settings.admin_token} (log in at {controller_url}/login). Ctrl-C stops.")
            _wait_forever()
        return outcome
    finally:
        demo.stop()


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return

