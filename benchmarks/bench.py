"""Measure what vmsbx adds on top of the raw tools, on the QEMU guest, and write the results files.

Each figure runs vmsbx and its baseline interleaved in this one invocation (warm-up first, then
`--reps` samples each). Baselines are real OpenSSH with the VM's own key and pinned host key
(never with checking off), tar, rsync, journalctl and the same QEMU command line.

    scripts/bench                 full run: every figure, the scaling curves
    scripts/bench --smoke         one sample of each figure, small trees (CI: keeps this from rotting)

The VM is `vm.name` of the settings (VMSBX_HOME etc. from the environment); `vmsbx up` is run
first, so a clean clone after `scripts/setup` works.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmsbx.providers.qemu_argv import QemuLaunch
    from vmsbx.sandbox.layout import RunLayout

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # beside this file, not a package

ROOT = Path(__file__).resolve().parents[1]
VMSBX = [sys.executable, "-m", "vmsbx"]


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and how."""


@dataclass(frozen=True)
class Sample:
    seconds: float
    code: int
    maxrss_mb: float
    stdout: bytes
    stderr: bytes


def spawn_timed(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    stdout_path: Path | None = None,
    check: bool = True,
) -> Sample:
    """Run argv, wall-clock it, and take its own peak RSS from wait4 (not the whole tree's max).

    Output goes to files, not pipes, so that nothing but wait4 reaps the child."""
    with contextlib.ExitStack() as stack:
        out = (
            stack.enter_context(stdout_path.open("w+b"))
            if stdout_path
            else stack.enter_context(tempfile.TemporaryFile())
        )
        err = stack.enter_context(tempfile.TemporaryFile())
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = b"" if stdout_path else out.read()
        stderr = err.read()
    if check and code != 0:
        raise BenchError(
            f"{shlex.join(argv)} exited {code}: {stderr.decode(errors='replace').strip()[-1500:]}"
        )
    return Sample(seconds, code, usage.ru_maxrss / 1024, stdout, stderr)


def pipeline_timed(first: list[str], second: list[str], *, env: dict[str, str], cwd: Path) -> float:
    """`first | second`, built from two argv lists (no shell), wall-clocked until both end."""
    start = time.perf_counter()
    producer = subprocess.Popen(first, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    consumer = subprocess.Popen(
        second, env=env, cwd=cwd, stdin=producer.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert producer.stdout is not None
    producer.stdout.close()
    _, err2 = consumer.communicate()
    err1 = producer.stderr.read() if producer.stderr else b""
    producer.wait()
    seconds = time.perf_counter() - start
    if producer.returncode or consumer.returncode:
        raise BenchError(f"pipeline failed: {err1.decode(errors='replace')} {err2.decode(errors='replace')}")
    return seconds


class Guest:
    """The VM as OpenSSH sees it: its key, its pinned host key, its current port."""

    def __init__(self, vm_dir: Path, work: Path) -> None:
        self.vm_dir = vm_dir
        self.alias = f"vmsbx-{vm_dir.name}"
        self.control = work / "cm.sock"

    @property
    def port(self) -> int:
        runtime = json.loads((self.vm_dir / "runtime.json").read_text())
        return int(runtime["ssh_port"])

    def options(self, *, mux: bool = False, master: bool = False, port: int | None = None) -> list[str]:
        if master:
            control = [
                "-o",
                "ControlMaster=yes",
                "-o",
                f"ControlPath={self.control}",
                "-o",
                "ControlPersist=900",
            ]
        elif mux:
            control = ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}"]
        else:
            control = ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return [
            "-F", "/dev/null",
            "-i", str(self.vm_dir / "keys" / "client_ed25519"),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.vm_dir / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={self.alias}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            *control,
            "-p", str(port or self.port),
        ]  # fmt: skip

    def ssh(self, *remote: str, mux: bool = False, port: int | None = None) -> list[str]:
        # ssh joins the remote words with spaces for the remote shell: quote them once, here.
        return ["ssh", *self.options(mux=mux, port=port), "root@127.0.0.1", shlex.join(remote)]

    def rsync_shell(self) -> str:
        return shlex.join(["ssh", *self.options()])

    def open_master(self, env: dict[str, str]) -> None:
        argv = ["ssh", *self.options(master=True), "-f", "-N", "root@127.0.0.1"]
        subprocess.run(argv, env=env, check=True, timeout=120)

    def close_master(self, env: dict[str, str]) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                ["ssh", *self.options(mux=True), "-O", "exit", "root@127.0.0.1"],
                env=env, capture_output=True, timeout=30, check=False,
            )  # fmt: skip


def make_tree(root: Path, files: int, size: int) -> None:
    """`files` files of `size` random-ish bytes, 100 per directory (a project-like fan-out)."""
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(max(size, 1))
    for index in range(files):
        folder = root / f"d{index // 100:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{index:06d}.txt").write_bytes(block[: size - 8] + index.to_bytes(8, "little"))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke: bool = args.smoke
        self.reps: int = 1 if args.smoke else args.reps
        self.heavy_reps: int = 1 if args.smoke else (args.heavy_reps or args.reps)
        self.curve_reps: int = args.curve_reps
        self.warmup: bool = not args.smoke
        self.out: Path = args.out
        self.work = Path(tempfile.mkdtemp(prefix="vmsbx-bench-"))
        self.env = dict(os.environ)
        self.env.pop("ANTHROPIC_API_KEY", None)  # plain commands: the default policy, no relay
        self.env.pop("CLAUDE_CODE_OAUTH_TOKEN", None)
        self.projects = 0
        self.results: dict[str, report.Measured] = {}
        self.rss: list[float] = []
        self.agent_peak = 0.0
        self.extra: dict[str, object] = {}
        self.vm = self._vm_name()
        from vmsbx.paths import vm_dir

        self.guest = Guest(vm_dir(self.vm), self.work)

    # -- plumbing ------------------------------------------------------------------------------

    def _vm_name(self) -> str:
        from vmsbx.config import load_settings

        return load_settings(project_dir=self.work, flags={}).vm.name

    def vmsbx(self, *args: str, cwd: Path | None = None, stdout_path: Path | None = None) -> Sample:
        sample = spawn_timed([*VMSBX, *args], env=self.env, cwd=cwd or self.work, stdout_path=stdout_path)
        if args and args[0] == "run":
            self.rss.append(sample.maxrss_mb)
        return sample

    def remote(self, *words: str, mux: bool = False, check: bool = True) -> Sample:
        return spawn_timed(self.guest.ssh(*words, mux=mux), env=self.env, cwd=self.work, check=check)

    def new_project(self, files: int = 3, size: int = 64) -> Path:
        self.projects += 1
        project = self.work / f"project-{self.projects:03d}"
        make_tree(project, files, size)
        return project

    def samples(self, count: int | None = None, *, warmup: bool = True) -> Iterator[bool]:
        """Warm-up (not recorded, yields False) then the recorded repetitions (yield True)."""
        if self.warmup and warmup:
            yield False
        for _ in range(count or self.reps):
            yield True

    def figure(self, key: str, body: Callable[[report.Measured], None]) -> None:
        measured = self.results.setdefault(key, report.Measured())
        started = time.perf_counter()
        print(f"bench: {key} …", file=sys.stderr, flush=True)
        try:
            body(measured)
        except Exception as exc:  # one broken figure is recorded; the others still get measured
            measured.error = f"{type(exc).__name__}: {exc}"[:1500]
            print(f"bench: {key}: FAILED: {measured.error}", file=sys.stderr, flush=True)
        print(f"bench: {key} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    # -- figures -------------------------------------------------------------------------------

    def cli_start(self, m: report.Measured) -> None:
        for keep in self.samples():
            mine = self.vmsbx("--help").seconds
            base = spawn_timed([sys.executable, "-c", "import click"], env=self.env, cwd=self.work).seconds
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)

    def warm_up(self, m: report.Measured) -> None:
        for keep in self.samples():
            mine = self.vmsbx("up").seconds
            base = self.remote("true").seconds
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)

    def _systemd_baseline_argv(self, nsjail: bool) -> list[str]:
        """The properties vmsbx gives a run, for a fixed bench run id, as one systemd-run --wait."""
        from vmsbx.config import load_settings
        from vmsbx.contract import NSJAIL
        from vmsbx.sandbox.layout import RunLayout
        from vmsbx.sandbox.nsjail import nsjail_config_path
        from vmsbx.sandbox.renderer import renderer_for

        # No disk I/O caps: they are set on the run's workspace loop device, which only vmsbx's
        # launcher makes (the unit then refuses to start); a cap costs nothing at unit start.
        limits = ("read_bps", "write_bps", "read_iops", "write_iops")
        uncapped = {f"sandbox.io_{key}": "max" for key in limits}
        flags = {"sandbox.mode": "nsjail" if nsjail else None, **uncapped}
        settings = load_settings(project_dir=self.work, flags=flags)
        layout = RunLayout(run_id=self._layout_id(nsjail))
        props = renderer_for("nsjail" if nsjail else "systemd").unit_properties(settings.sandbox, layout)
        # ExecStopPost= records the verdict for vmsbx's own launcher, which this baseline bypasses.
        props = [p for p in props if not p.startswith("ExecStopPost=")]
        argv = ["systemd-run", "--wait", "--pipe", "--quiet"]
        for prop in props:
            argv += ["-p", prop]
        if nsjail:
            return [*argv, "--", NSJAIL, "--quiet", "--config", nsjail_config_path(layout), "--", "/bin/true"]
        return [*argv, "--", "/bin/true"]

    @staticmethod
    def _layout_id(nsjail: bool) -> str:
        return "b0000000000n" if nsjail else "b0000000000s"

    def _prepare_systemd_baseline(self) -> None:
        from vmsbx.sandbox.layout import RunLayout

        layout = RunLayout(run_id=self._layout_id(False))
        self.remote("mkdir", "-p", "-m", "1777", layout.tmp_dir)

    def run_overhead(self, m: report.Measured) -> None:
        project = self.new_project()
        floor = self.results.setdefault("run_floor", report.Measured())
        self._prepare_systemd_baseline()
        argv = self._systemd_baseline_argv(nsjail=False)
        self.vmsbx("run", "--", "true", cwd=project)  # its first sync: not what this figure measures
        self.guest.open_master(self.env)
        try:
            for keep in self.samples():
                mine = self.vmsbx("run", "--", "true", cwd=project).seconds
                fresh = self.remote(*argv).seconds
                muxed = self.remote(*argv, mux=True).seconds
                if keep:
                    m.vmsbx.append(mine)
                    m.baseline.append(fresh)
                    floor.vmsbx.append(mine)
                    floor.baseline.append(muxed)
        finally:
            self.guest.close_master(self.env)
        m.note = floor.note = (
            "Both sides run the same hardened transient unit (vmsbx's rendered properties, minus "
            "ExecStopPost=, which only vmsbx's launcher uses, and the disk I/O caps, which need the "
            "run's workspace loop device). vmsbx also syncs the (unchanged) "
            "3-file project, registers the run with the host agent, collects changes and the journal."
        )

    def trace(self) -> str:
        """One `vmsbx run -- true` on a synced project with every guest call and the unit's
        phases timed (benchmarks/trace_calls.py): where the run overhead goes."""
        project = self.new_project()
        self.vmsbx("run", "--", "true", cwd=project)  # the first sync: not what is traced
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "trace_calls.py"), "run", "--", "true"],
            env=self.env, cwd=project, capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if line.startswith(("trace: ", "phase: "))]
        return "\n".join(["```", *lines, "```"])

    def _prepare_nsjail_baseline(self) -> None:
        from vmsbx.config import load_settings
        from vmsbx.sandbox.layout import RunLayout
        from vmsbx.sandbox.nsjail import outside_uid_for, render_nsjail_config

        settings = load_settings(project_dir=self.work, flags={"sandbox.mode": "nsjail"})
        layout = RunLayout(run_id=self._layout_id(True))
        uid = outside_uid_for(layout.run_id)
        facts = json.loads((self.guest.vm_dir / "guest.json").read_text())
        config = render_nsjail_config(settings.sandbox, layout, outside_uid=uid, arch=facts.get("arch", ""))
        self._push(config, layout, uid)

    def _push(self, config: str, layout: RunLayout, uid: int) -> None:
        from vmsbx.sandbox.nsjail import nsjail_config_path

        argv = self.guest.ssh(
            "sh", "-c", 'mkdir -p "$1" "$2" "$3" && chown "$4:$4" "$2" "$3" && cat > "$5"',
            "-", layout.run_dir, layout.workspace_mount, layout.tmp_dir, str(uid), nsjail_config_path(layout),
        )  # fmt: skip
        result = subprocess.run(argv, input=config.encode(), env=self.env, capture_output=True, check=False)
        if result.returncode != 0:
            raise BenchError(f"could not stage the nsjail baseline: {result.stderr.decode(errors='replace')}")

    def nsjail_run(self, m: report.Measured) -> None:
        project = self.new_project()
        # vmsbx installs nsjail in the guest on the first nsjail run: do it before timing.
        self.vmsbx("run", "--sandbox", "nsjail", "--", "true", cwd=project)
        self._prepare_nsjail_baseline()
        argv = self._systemd_baseline_argv(nsjail=True)
        for keep in self.samples():
            mine = self.vmsbx("run", "--sandbox", "nsjail", "--", "true", cwd=project).seconds
            base = self.remote(*argv).seconds
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)
        m.note = (
            "Baseline: the same outer-unit properties and the same rendered nsjail config, over fresh ssh."
        )

    def first_sync(self, m: report.Measured, files: int, size: int) -> None:
        template = self.work / f"tree-{files}"
        if not template.exists():
            make_tree(template, files, size)
        for keep in self.samples(self.heavy_reps, warmup=False):
            self.projects += 1
            project = self.work / f"project-{self.projects:03d}"
            shutil.copytree(template, project, symlinks=True)
            mine = self.vmsbx("run", "--", "true", cwd=project).seconds
            target = f"/root/bench-tar-{self.projects}"
            base = pipeline_timed(
                ["tar", "-c", "-C", str(template), "."],
                self.guest.ssh("sh", "-c", 'mkdir -p "$1" && tar -x -C "$1"', "-", target),
                env=self.env,
                cwd=self.work,
            )
            self.remote("rm", "-rf", target)
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)
        self.sync_project = project
        m.note = (
            f"{files:,} files, {files * size / 1e6:.0f} MB, a new project each sample (no warm-up: "
            "nothing carries over between samples). vmsbx's time is a "
            "whole `vmsbx run -- true` (sync-in plus the run overhead measured above)."
        )

    def resync_one(self, m: report.Measured) -> None:
        project = self.sync_project
        mirror = self.work / "rsync-source"
        if mirror.exists():
            shutil.rmtree(mirror)
        shutil.copytree(project, mirror, symlinks=True)
        destination = "root@127.0.0.1:/root/bench-rsync/"
        rsync = ["rsync", "-a", "--delete", "-e", self.guest.rsync_shell()]
        spawn_timed([*rsync, f"{mirror}/", destination], env=self.env, cwd=self.work)
        victim = sorted(project.rglob("*.txt"))[0].relative_to(project)
        for index, keep in enumerate(self.samples()):
            (project / victim).write_text(f"change {index}\n")
            mine = self.vmsbx("run", "--", "true", cwd=project).seconds
            (mirror / victim).write_text(f"change {index}\n")
            base = spawn_timed([*rsync, f"{mirror}/", destination], env=self.env, cwd=self.work).seconds
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)
        self.remote("rm", "-rf", "/root/bench-rsync")
        m.note = "Same tree as the first sync; vmsbx's time is a whole `vmsbx run -- true`."

    def changes_back(self, m: report.Measured, files: int) -> None:
        write = f'for i in $(seq {files}); do echo "$i" > "out-$i.txt"; done'
        base_dir = "/root/bench-back"
        self.remote("sh", "-c", f"mkdir -p {base_dir} && cd {base_dir} && {write}")
        collect: list[float] = []
        for keep in self.samples(self.heavy_reps):
            project = self.new_project()
            run = self.vmsbx("run", "--", "sh", "-c", write, cwd=project)
            diff = self.vmsbx("diff", cwd=project, stdout_path=self.work / "diff.out").seconds
            apply = self.vmsbx("apply", "-y", cwd=project).seconds
            if len(list(project.glob("out-*.txt"))) != files:
                raise BenchError(f"vmsbx apply did not bring back {files} files")
            target = self.work / f"back-{self.projects}"
            base = spawn_timed(
                ["rsync", "-a", "-e", self.guest.rsync_shell(), f"root@127.0.0.1:{base_dir}/", f"{target}/"],
                env=self.env,
                cwd=self.work,
            ).seconds
            if keep:
                m.vmsbx.append(diff + apply)
                m.baseline.append(base)
                collect.append(run.seconds)
        self.remote("rm", "-rf", base_dir)
        m.note = (
            f"{files:,} new files. The guest-to-host transfer happens inside `vmsbx run` (collect, into "
            f"runs/<id>/changes): that whole run took {report.summarize(collect).median:.2f} s (median)."
        )

    def log_pull(self, m: report.Measured, lines: int) -> None:
        project = self.new_project()
        run = self.vmsbx("run", "--", "seq", str(lines), cwd=project, stdout_path=self.work / "seq.out")
        run_id = self._newest_run()
        record = json.loads(self._run_file(run_id).read_text())
        invocation = record["invocation_id"]
        for keep in self.samples():
            mine_out, base_out = self.work / "logs.vmsbx", self.work / "logs.ssh"
            mine = self.vmsbx("logs", run_id, "--json", cwd=project, stdout_path=mine_out).seconds
            base = spawn_timed(
                self.guest.ssh("journalctl", "-o", "json", f"_SYSTEMD_INVOCATION_ID={invocation}"),
                env=self.env,
                cwd=self.work,
                stdout_path=base_out,
            ).seconds
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)
        got = sum(1 for _ in mine_out.open("rb"))
        if got < lines:
            raise BenchError(f"vmsbx logs gave {got} entries for a run that printed {lines} lines")
        m.note = (
            f"{got:,} journal entries. An ended run's journal was already pulled by `vmsbx run` "
            f"(that run took {run.seconds:.1f} s); `vmsbx logs` reads the local copy."
        )

    def _newest_run(self) -> str:
        listing = json.loads(self.vmsbx("runs", "--json").stdout)
        runs = listing if isinstance(listing, list) else listing.get("runs", [])
        newest = max(runs, key=lambda item: item.get("started_at", ""))
        return str(newest["id"])

    def _run_file(self, run_id: str) -> Path:
        from vmsbx.runs.record import run_dir

        return run_dir(run_id) / "run.json"

    def cold_up(self, m: report.Measured) -> None:
        from vmsbx.providers.qemu_argv import render_qemu_argv

        for keep in self.samples(self.heavy_reps):
            self.vmsbx("stop")
            mine = self.vmsbx("up").seconds
            self.vmsbx("stop")
            launch = self._launch_like_vmsbx()
            base = self._boot_baseline(render_qemu_argv(launch))
            if keep:
                m.vmsbx.append(mine)
                m.baseline.append(base)
        self.vmsbx("up")
        m.note = (
            "Baseline: QEMU with vmsbx's own argv for this VM (fresh port), then `ssh true` until it answers."
        )

    def _launch_like_vmsbx(self) -> QemuLaunch:
        """The QemuLaunch vmsbx's provider builds for this VM (same disk, keys, accel)."""
        from vmsbx.paths import cache_root
        from vmsbx.providers.accel import choose_accel
        from vmsbx.providers.qemu import QEMU_BINARY
        from vmsbx.providers.qemu_argv import FwCfgItem, QemuLaunch

        directory = self.guest.vm_dir
        record = json.loads((directory / "vm.json").read_text())
        image_dir = Path(record["image_dir"])
        accel = choose_accel(
            record["accel"], QEMU_BINARY, image_dir / "vmlinuz", cache_file=cache_root() / "accel-probe"
        )
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.baseline_port = sock.getsockname()[1]
        return QemuLaunch(
            accel=accel, cpus=record["cpus"], memory_mib=record["memory_mib"],
            kernel=image_dir / "vmlinuz", initrd=image_dir / "initrd", disk=directory / "disk.qcow2",
            ssh_port=self.baseline_port, network=record["network"], qmp_socket=directory / "qmp.sock",
            serial_log=directory / "serial.log", pid_file=directory / "qemu.pid",
            fw_cfg=tuple(
                FwCfgItem(name=name, path=path)
                for name, path in (
                    ("ssh_host_ed25519_key", directory / "keys" / "ssh_host_ed25519_key"),
                    ("ssh_host_ed25519_key.pub", directory / "keys" / "ssh_host_ed25519_key.pub"),
                    ("authorized_keys", directory / "authorized_keys"),
                )
            ),
        )  # fmt: skip

    def _boot_baseline(self, argv: list[str]) -> float:
        directory = self.guest.vm_dir
        ssh = ["ssh", "-o", "ConnectTimeout=5", *self.guest.ssh("true", port=self.baseline_port)[1:]]
        poweroff = self.guest.ssh("systemctl", "poweroff", port=self.baseline_port)
        start = time.perf_counter()
        qemu = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = start + 600
            while True:
                if qemu.poll() is not None:
                    raise BenchError(f"baseline QEMU exited {qemu.returncode}")
                if subprocess.run(ssh, env=self.env, capture_output=True, check=False).returncode == 0:
                    break
                if time.perf_counter() > deadline:
                    raise BenchError("baseline guest did not answer ssh within 600 s")
                time.sleep(0.2)
            seconds = time.perf_counter() - start
        finally:
            # Whatever happened, this QEMU (ours) must be gone before vmsbx boots the disk again.
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(poweroff, env=self.env, capture_output=True, check=False, timeout=60)
            try:
                qemu.wait(timeout=90)
            except subprocess.TimeoutExpired:
                qemu.kill()
                qemu.wait()
            for leftover in ("qmp.sock", "qemu.pid"):
                (directory / leftover).unlink(missing_ok=True)
        return seconds

    def sample_agent(self) -> None:
        """The host agent's peak RSS so far (VmHWM; it restarts with the VM, so sample before)."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads((self.guest.vm_dir / "agent.json").read_text())["pid"])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.agent_peak = max(self.agent_peak, int(line.split()[1]) / 1024)

    def peak_rss(self, m: report.Measured) -> None:
        m.vmsbx = list(self.rss)
        self.sample_agent()
        agent = f"{self.agent_peak:.0f} MB" if self.agent_peak else "unknown"
        m.note = (
            f"Peak RSS (wait4 ru_maxrss) of each `vmsbx run` process in this invocation ({len(self.rss)} "
            f"runs). The host agent (one per VM, holds the connection, relay and proxy): peak {agent}."
        )

    # -- curves --------------------------------------------------------------------------------

    def concurrent_runs(self, m: report.Measured, count: int) -> None:
        """`count` runs of synced projects at once (the host agent, the guest agent and systemd
        shared), their wall time per run against one run alone, interleaved."""
        projects = [self.new_project() for _ in range(count)]
        for project in projects:  # first syncs, untimed
            self.vmsbx("run", "--", "true", cwd=project)
        for keep in self.samples():
            alone = self.vmsbx("run", "--", "true", cwd=projects[0]).seconds
            together = self._at_once(projects) / count
            if keep:
                m.vmsbx.append(together)
                m.baseline.append(alone)
        m.note = (
            f"{count} projects of 3 files, each synced before; vmsbx: the wall time until all {count} "
            "`vmsbx run -- true` started together have ended, divided by "
            f"{count}; baseline: one such run alone. Two cores: per-run cost below 1x means overlap."
        )

    def _at_once(self, projects: list[Path]) -> float:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*VMSBX, "run", "--", "true"],
                env=self.env,
                cwd=p,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for p in projects
        ]
        failed = [p.communicate()[1] for p in procs if p.wait() != 0]
        if failed:
            raise BenchError(f"concurrent run failed: {failed[0].decode(errors='replace')[-500:]}")
        return time.perf_counter() - start

    def concurrency_curve(self) -> list[str]:
        lines = []
        for count in (1, 2, 4, 8):
            projects = [self.new_project() for _ in range(count)]
            for project in projects:  # first sync, untimed
                self.vmsbx("run", "--", "true", cwd=project)
            walls = [self._at_once(projects) for _ in range(self.curve_reps)]
            wall = report.summarize(walls).median
            lines.append(
                f"{count} concurrent `vmsbx run -- true`: all done in {wall:.2f} s (median of {len(walls)}), "
                f"{wall / count:.2f} s per run"
            )
        return lines

    def sync_curve(self) -> list[str]:
        lines = []
        for files in (1000, 10000, 50000):
            project = self.work / f"curve-{files}"
            make_tree(project, files, 4096)
            seconds = self.vmsbx("run", "--", "true", cwd=project).seconds
            base = pipeline_timed(
                ["tar", "-c", "-C", str(project), "."],
                self.guest.ssh("sh", "-c", "mkdir -p /root/bench-curve && tar -x -C /root/bench-curve"),
                env=self.env,
                cwd=self.work,
            )
            self.remote("rm", "-rf", "/root/bench-curve")
            lines.append(
                f"{files:,} files ({files * 4096 / 1e6:.0f} MB): first `vmsbx run -- true` {seconds:.2f} s; "
                f"tar | ssh tar {base:.2f} s"
            )
        return lines

    # -- the whole -----------------------------------------------------------------------------

    def meta(self) -> dict[str, object]:
        cpu = "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        runtime = json.loads((self.guest.vm_dir / "runtime.json").read_text())
        record = json.loads((self.guest.vm_dir / "vm.json").read_text())
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "smoke (1 sample, small trees, no targets enforced)" if self.smoke
            else f"full ({self.reps} samples after a warm-up)",
            "machine": f"{platform.node()} ({platform.machine()}, {cpu})",
            "cpus": os.cpu_count(),
            "load_average_at_start": " ".join(f"{x:.2f}" for x in self.load_at_start),
            "acceleration": runtime.get("accel"),
            "guest_image": f"{record.get('image')} ({Path(str(record.get('image_dir'))).name}), "
            f"{record.get('cpus')} vCPU, {record.get('memory_mib')} MiB",
            "vmsbx_commit": commit,
            "python": platform.python_version(),
        }  # fmt: skip

    def run(self, only: set[str] | None) -> int:
        try:
            return self._run(only)
        finally:
            self._clean_guest()
            shutil.rmtree(self.work, ignore_errors=True)

    def _clean_guest(self) -> None:
        """The baselines' own leftovers in the guest (never mounted: plain directories)."""
        from vmsbx.sandbox.layout import RunLayout

        doomed = []
        for nsjail in (False, True):
            layout = RunLayout(run_id=self._layout_id(nsjail))
            doomed += [layout.run_dir, layout.workspace_mount]
        with contextlib.suppress(Exception):
            self.remote("rm", "-rf", "--one-file-system", *doomed, check=False)

    def _run(self, only: set[str] | None) -> int:
        self.load_at_start = os.getloadavg()
        print(f"bench: bringing VM {self.vm} up", file=sys.stderr, flush=True)
        spawn_timed([*VMSBX, "up"], env=self.env, cwd=self.work)
        meta = self.meta()
        small = self.smoke
        steps: list[tuple[str, Callable[[report.Measured], None]]] = [
            ("cli_start", self.cli_start),
            ("warm_up", self.warm_up),
            ("run_overhead", self.run_overhead),
            ("nsjail_run", self.nsjail_run),
            ("first_sync", lambda m: self.first_sync(m, 200 if small else 10_000, 10_000)),
            ("resync_one", self.resync_one),
            # Smoke: 2 at once (it only keeps the script working; 8 TCG runs take minutes).
            ("concurrent_runs", lambda m: self.concurrent_runs(m, 2 if small else 8)),
            ("changes_back", lambda m: self.changes_back(m, 100 if small else 1000)),
            ("log_pull", lambda m: self.log_pull(m, 2000 if small else 100_000)),
            ("cold_up", self.cold_up),
        ]
        for key, body in steps:
            if key == "cold_up":
                self.sample_agent()
            if only is None or key in only:
                self.figure(key, body)
                self.write(meta)  # after every figure: an interrupted run keeps what it measured
        self.figure("peak_rss", self.peak_rss)
        if only is None or "trace" in only:
            print("bench: trace of one run …", file=sys.stderr, flush=True)
            try:
                self.extra["trace"] = self.trace()
            except (subprocess.SubprocessError, OSError) as exc:
                self.extra["trace"] = f"FAILED: {exc}"
        for name, curve in (("concurrency", self.concurrency_curve), ("sync_size", self.sync_curve)):
            if not self.smoke and (only is None or name in only):
                print(f"bench: curve {name} …", file=sys.stderr, flush=True)
                try:
                    self.extra[name] = curve()
                except (BenchError, subprocess.SubprocessError, OSError) as exc:
                    self.extra[name] = [f"FAILED: {exc}"]
        self.write(meta)
        print(f"bench: wrote {self.out / 'results.md'} and results.json", file=sys.stderr)
        return 0

    def write(self, meta: dict[str, object]) -> None:
        rows = [report.evaluate(f, self.results.get(f.key, report.Measured())) for f in report.FIGURES]
        extra: dict[str, object] = {}
        if "concurrency" in self.extra:
            extra["Scaling: concurrent runs"] = self.extra["concurrency"]
        if "sync_size" in self.extra:
            extra["Scaling: sync time against tree size"] = self.extra["sync_size"]
        if "trace" in self.extra:
            extra["Trace of one run (`vmsbx run -- true`, benchmarks/trace_calls.py)"] = self.extra["trace"]
        analysis = Path(__file__).resolve().parent / "analysis.md"
        if analysis.is_file():  # the profile and before/after figures, written by people
            extra["Where the time goes (profile) and what was changed"] = analysis.read_text().strip()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.md").write_text(report.render_markdown(meta, rows, extra))
        (self.out / "results.json").write_text(report.render_json(meta, rows, extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="One sample per figure, small trees (CI).")
    parser.add_argument("--reps", type=int, default=5, help="Samples per figure after the warm-up.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="Where results.md/json go.")
    parser.add_argument(
        "--heavy-reps",
        type=int,
        default=None,
        help="Samples of first_sync, changes_back, cold_up (default: --reps).",
    )
    parser.add_argument(
        "--curve-reps", type=int, default=3, help="Samples per point of the concurrency curve."
    )
    parser.add_argument(
        "--only",
        action="append",
        help="Measure only this figure or curve (concurrency, sync_size) or the trace of one run "
        "(trace); repeatable.",
    )
    args = parser.parse_args(argv)
    return Bench(args).run(set(args.only) if args.only else None)


if __name__ == "__main__":
    sys.exit(main())
