"""Trials as Ray tasks: a local Ray instance (loopback only, `workers` CPUs) or a cluster.

Each task runs `trial.run_trial` on a worker, which starts `python -m reverie train` there;
on a cluster every node needs reverie installed and the sweep folder on a shared filesystem.
A task asks for the CPUs its run uses (and a share of the GPUs where the cluster has some).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from reverie.distributed.grid import Trial
from reverie.distributed.trial import run_trial, trial_record
from reverie.errors import Stopped, UserError

INSTALL = "pip install 'reverie[ray]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--backend ray needs Ray, which is not installed: {INSTALL} "
                        "(or use --backend local)") from None
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT that refuses connections fails here in seconds, not in Ray's long retry."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        host, sep, port = address[len("ray://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address must be auto or HOST:PORT (e.g. 10.0.0.5:6379), got "
                        f"'{address}'")
    host = host.strip("[]")  # an IPv6 literal, [::1]:6379
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            speaks_grpc = _answers_http2(conn)
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start "
                        "one with `ray start --head` there, fix --address, or drop --address "
                        "for a local Ray instance") from None
    tls = os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true")  # no plaintext preface
    if not speaks_grpc and not tls:  # Ray would retry it for minutes, with C++ warnings
        raise UserError(f"{address} answers, but not as a Ray cluster (no gRPC there: a "
                        "dashboard's or another server's port?); give the head's GCS port "
                        "(6379 unless `ray start --head --port` said otherwise), or ray:// "
                        "with its client port (10001)")


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _answers_http2(conn: socket.socket) -> bool:
    """Whether the server behind `conn` speaks HTTP/2, as Ray's gRPC servers (the GCS, the
    client server) do: to the client's connection preface an HTTP/2 server answers with a
    SETTINGS frame (type 4, the 4th byte of its 9-byte header); an HTTP/1 server with
    'HTTP/1.x 400', others with nothing."""
    conn.settimeout(5)
    try:
        conn.sendall(HTTP2_PREFACE + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # + empty SETTINGS
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 4


# Ray picks the machine's network address for a new instance unless clusters are "disabled"
# (its setting for laptops), in which case every server binds to 127.0.0.1 only.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Ray's raylet starts its workers at niceness 15 unless told otherwise; a trial (a child of
# its worker) inherits it, and on a machine doing anything else it then gets a few percent
# of a core (a 200-step random run took minutes beside two training runs). A local
# instance's trials run at the sweep's own priority, as --backend local's do.
NICENESS_ENV = "RAY_worker_niceness"


AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def _local_instance_settings() -> Callable[[], None]:
    """A local instance that listens on the loopback interface only, never the network, and
    whose workers run at this process's priority; returns the function that puts the
    settings back."""
    from ray._private import ray_constants

    env = {LOOPBACK_ENV: "0"}  # read by Ray's processes as they start
    if NICENESS_ENV not in os.environ:  # a user's own setting is kept
        env[NICENESS_ENV] = "0"
    before = {k: os.environ.get(k) for k in env}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by this process (Ray already imported)

    def restore() -> None:
        for key, value in before[0].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ray_constants.ENABLE_RAY_CLUSTER = before[1]

    return restore


def _init(ray, address: str | None, workers: int) -> Callable[[], None]:
    """Start or join Ray; returns what undoes this function's settings after shutdown."""
    restore: Callable[[], None] = lambda: None  # noqa: E731
    env = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    try:
        if address is None:
            restore = _local_instance_settings()
            # its token-authentication notice, a line without context on a sweep's console,
            # is about clusters others can reach: this instance listens on loopback only
            notice = logging.getLogger(AUTH_NOTICE_LOGGER)
            level = notice.level
            notice.setLevel(logging.ERROR)
            try:
                # address "local": a new instance even where one runs already (ray.init()
                # would join that one, and refuse num_cpus for it)
                ray.init(address="local", num_cpus=workers, num_gpus=_local_gpus(),
                         include_dashboard=False,
                         log_to_driver=False, configure_logging=False,
                         runtime_env={"env_vars": env} if env else None)
            finally:
                notice.setLevel(level)
        else:
            if address != "auto":
                _check_reachable(address)
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        return restore
    except UserError:
        raise
    except (ConnectionError, RuntimeError, ValueError) as e:
        restore()
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        if address is None:
            raise UserError(f"cannot start a local Ray instance ({reason}); join a running "
                            "cluster with --address auto, or use --backend local") from None
        where = "a running Ray cluster (auto)" if address == "auto" else address
        raise UserError(f"cannot join {where} ({reason}); start one with `ray start --head`, "
                        "fix --address, or drop --address for a local Ray instance") from None
    except BaseException:  # anything else (Ctrl-C included): this process's settings back
        restore()
        raise


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA runtime at all: no GPUs
        return 0


def run_ray(trials: list[Trial], workers: int, retries: int, address: str | None,
            on_result: Callable[[dict], None],
            on_start: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Run every trial as a Ray task, at most `workers` at a time; results as they finish.
    `on_start` is called once Ray is up, before the first trial."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    handlers = _signal_handlers()
    restore = _init(ray, address, workers) if started_here else (lambda: None)
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        # a local instance has `workers` CPUs, one per trial; on a cluster each trial asks
        # for the threads its run uses
        cpus = 1 if address is None else max(1, _threads(trials[0]))
        task = ray.remote(num_cpus=cpus, num_gpus=min(1.0, gpus / workers) if gpus else 0,
                          max_retries=0)(_ray_trial)
        on_start()
        pending = list(trials)
        running: dict[Any, Trial] = {}
        results: list[dict[str, Any]] = []
        # ray.init's own SIGTERM handler prints a crash report and exits, and Ray then kills
        # the trials without their checkpoints: SIGTERM stops the sweep as Ctrl-C does
        _TERMINATED.clear()
        _set_signal_handlers({signal.SIGTERM: _terminate})
        try:
            while pending or running:
                while pending and len(running) < workers:
                    trial = pending.pop(0)
                    running[task.remote(trial, retries)] = trial
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    trial = running[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker itself died
                        result = trial_record(
                            trial, status="failed", wall_s=0.0,
                            error=f"Ray task failed: {str(e).splitlines()[0][:200]}")
                    on_result(result)
                    results.append(result)  # the trials reported so far
                    del running[ref]  # after its record: a stop now still finds it
        except KeyboardInterrupt:
            name = "SIGTERM" if _TERMINATED else "SIGINT"
            reported = {r["name"] for r in results}
            for result in _stop(ray, running):  # each trial's line, as a local sweep's
                if result["name"] not in reported:
                    results.append(result)
                    on_result(result)
            raise Stopped(f"sweep stopped by {name}; its running trials stopped with their "
                          "checkpoints: run the same command again to resume them "
                          "(finished trials are kept)", name) from None
        return results
    finally:
        _set_signal_handlers(handlers)  # SIGTERM's handler as it was before the sweep
        if started_here:
            ray.shutdown()
            restore()
            _set_signal_handlers(handlers)  # ray.shutdown leaves ray.init's in place


def _ray_trial(trial: Trial, retries: int) -> dict[str, Any]:
    """`run_trial` as a Ray task, with Python handling SIGINT in its worker: `_stop`'s
    `ray.cancel` interrupts the task by simulating a SIGINT, which does nothing where SIGINT
    is ignored, as it is in every process a sweep started in the background (`nohup`, `&`)
    starts, Ray's workers included: the trial then trained on until Ray killed it."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_trial(trial, retries, interruptible=True)


STOP_WAIT_S = 120.0  # for the running trials to save their checkpoints after a Ctrl-C


_TERMINATED: list[str] = []  # "SIGTERM" once `_terminate` has run


def _terminate(signum, frame) -> None:
    """SIGTERM to a Ray sweep: a KeyboardInterrupt, as Ctrl-C's (Ray's waits pass only that
    on; another exception from a handler comes out of them as a SystemError), marked as
    SIGTERM's."""
    _TERMINATED.append("SIGTERM")
    raise KeyboardInterrupt


def _stop(ray, running: dict) -> list[dict[str, Any]]:
    """Cancel the running trials' tasks (`running`: task ref -> Trial): each task's `reverie
    train` gets SIGTERM (`trial._run_child`) and saves a checkpoint, which this waits for (up
    to STOP_WAIT_S). Returns the records of the tasks that ended ("stopped", or "finished" by
    then), and a "stopped" one for each trial still running at the end of the wait (Ray's
    shutdown ends it; it resumes from its last checkpoint)."""
    records: list[dict[str, Any]] = []
    refs = list(running)
    try:
        for ref in refs:
            ray.cancel(ref, force=False)
        ended, late = ray.wait(refs, num_returns=len(refs), timeout=STOP_WAIT_S)
        for ref in ended:
            try:
                records.append(ray.get(ref))
            except ray.exceptions.RayError:  # cancelled before its trial started
                pass
    except KeyboardInterrupt:  # a second stop: stop waiting (ray.shutdown ends the trials)
        return records
    for ref in late:
        records.append(trial_record(
            running[ref], status="stopped", wall_s=0.0,
            note=f"still running {STOP_WAIT_S:.0f} s after the stop, ended by Ray: the next "
                 "run of this sweep resumes it from its last checkpoint"))
    return records


def _signal_handlers() -> dict[int, Any]:
    """This process's SIGINT and SIGTERM handlers: ray.init replaces SIGTERM's with its own
    and ray.shutdown leaves it there, so that a run trained later in the same process
    (a library user's) would die at a SIGTERM instead of stopping with a checkpoint
    (`run/stop.py` takes over only the default handlers)."""
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _set_signal_handlers(handlers: dict[int, Any]) -> None:
    if threading.current_thread() is threading.main_thread():  # only it may set them
        for sig, handler in handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)


def _threads(trial: Trial) -> int:
    for item in trial.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "run.threads" and value.strip().isdigit():
            return int(value)
    return 1
