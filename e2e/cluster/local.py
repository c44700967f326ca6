"""A real, local Kubernetes control plane for the e2e tests, with kwok playing the kubelets.

:class:`LocalCluster` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok as child processes on free loopback ports, writes a
kubeconfig for them and stops and removes everything on :meth:`LocalCluster.stop`
(also when the Python process dies: each child gets ``PR_SET_PDEATHSIG``).
Nodes are fake: kwok manages those that carry the annotation
``kwok.x-k8s.io/node: fake`` (see :mod:`e2e.cluster.nodes`).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from e2e.cluster.binaries import CLUSTER_DIR, find_binaries
from e2e.cluster.pki import SERVICE_CLUSTER_IP_RANGE, Pki, make_pki

__all__ = ["NODE_IP", "ClusterStartError", "LocalCluster", "random_pod_cidr", "start_kwok"]

# The InternalIP kwok gives every fake node, and so every pod's hostIP.
NODE_IP = "127.0.0.1"
# Second octets a pod CIDR 127.N.0.0/16 may take: clear of 127.0.0.1 (where every
# component listens) and of the service range 127.96.0.0/16 (pki.py).
_POD_CIDR_OCTETS = range(100, 200)
FAKE_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"
KWOK_STAGES = CLUSTER_DIR / "kwok-stages.yaml"


class ClusterStartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the child when the test process dies, so a killed run leaks nothing."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


def random_pod_cidr() -> str:
    """A pod CIDR ``127.N.0.0/16`` with N drawn from 100-199.

    Tests may send traffic only to 127.0.0.0/8, and a stand-in replica listens at
    its pod's IP (e2e/standin/follow.py): Linux routes all of 127/8 to the loopback
    interface, so pod IPs come from a block inside it. The block is drawn per
    cluster because several clusters may run on one machine at once (one per
    engineer or CI job): with one fixed block, two clusters' first pods would both
    get 127.N.0.1 and their replicas would fight over the same address and port.
    """
    return f"127.{random.choice(_POD_CIDR_OCTETS)}.0.0/16"


def start_kwok(
    kwok: Path, kubeconfig: Path, log_dir: Path, pod_cidr: str | None = None
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """Start kwok against ``kubeconfig``, managing only nodes annotated ``kwok.x-k8s.io/node=fake``.

    Pods on nodes without ``spec.podCIDR`` get IPs from ``pod_cidr`` (a
    :func:`random_pod_cidr` when None). Returns the process, its log file and the
    port of its health endpoint.
    """
    port = _free_port()
    log = log_dir / "kwok.log"
    args = [
        str(kwok),
        f"--kubeconfig={kubeconfig}",
        f"--manage-nodes-with-annotation-selector={FAKE_NODE_SELECTOR}",
        f"--config={KWOK_STAGES}",
        f"--server-address=127.0.0.1:{port}",
        f"--cidr={pod_cidr or random_pod_cidr()}",
        f"--node-ip={NODE_IP}",
    ]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
    return popen, log, port


@dataclass
class LocalCluster:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``work_dir``
    (a fresh temporary directory by default) holds certificates, the etcd data,
    ``kubeconfig`` and ``logs/<component>.log``; it is deleted on stop unless
    ``keep_work_dir`` is set.
    """

    binaries: dict[str, Path] = field(default_factory=find_binaries)
    work_dir: Path | None = None
    keep_work_dir: bool = False
    startup_timeout: float = 90.0
    with_kwok: bool = True
    """Start kwok too; without it nodes and pods get no status (nothing turns Ready)."""
    pod_cidr: str = field(default_factory=random_pod_cidr)
    """Where kwok takes pod IPs from: inside 127.0.0.0/8, drawn per cluster (:func:`random_pod_cidr`)."""
    _procs: list[_Process] = field(default_factory=list, init=False, repr=False)
    _owns_work_dir: bool = field(default=False, init=False, repr=False)
    _pki: Pki | None = field(default=None, init=False, repr=False)
    api_server_url: str = field(default="", init=False)

    # -- public ---------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Path of a kubeconfig (admin, ``system:masters``) for this cluster."""
        assert self.work_dir is not None, "cluster not started"
        return self.work_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        """Directory with one log file per component."""
        assert self.work_dir is not None, "cluster not started"
        return self.work_dir / "logs"

    def start(self) -> LocalCluster:
        """Start every component and wait until the cluster can run pods; stop all on failure."""
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="ebbtide-e2e-"))
            self._owns_work_dir = True
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the components (newest first) and remove the work directory."""
        # One at a time, clients before servers: an API server whose etcd is
        # already gone spends its shutdown retrying it. The data is thrown away,
        # so a component slow to drain is killed rather than waited for.
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.popen.terminate()
                try:
                    proc.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        self._procs.clear()
        if self.work_dir is not None and self._owns_work_dir and not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise :class:`ClusterStartError` if a component has exited."""
        for proc in self._procs:
            code = proc.popen.poll()
            if code is not None:
                raise ClusterStartError(f"{proc.name} exited with code {code}; last log lines:\n{proc.tail()}")

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> _Process:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        proc = _Process(name, popen, log)
        self._procs.append(proc)
        return proc

    def _wait(self, proc: _Process, what: str, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError, urllib.error.URLError, ssl.SSLError):
                if probe():
                    return
            time.sleep(0.2)
        raise ClusterStartError(
            f"{proc.name}: {what} not reached within {self.startup_timeout:.0f}s; last log lines:\n{proc.tail()}"
        )

    def _client_ssl(self) -> ssl.SSLContext:
        assert self._pki is not None
        ctx = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        ctx.load_cert_chain(str(self._pki.admin_cert), str(self._pki.admin_key))
        return ctx

    @staticmethod
    def _get_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200)

    def _start(self) -> None:
        assert self.work_dir is not None
        bins = self.binaries
        pki = self._pki = make_pki(self.work_dir / "pki")

        etcd_port, etcd_peer = _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(bins["etcd"]),
                "--name=e2e",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=e2e=http://127.0.0.1:{etcd_peer}",
                # Test data is thrown away: skipping fsync makes every write much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, "/health", lambda: self._get_ok(f"{etcd_url}/health"))

        api_port = _free_port()
        self.api_server_url = f"https://127.0.0.1:{api_port}"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(bins["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoint reconciler refuses a loopback address, and nothing
                # here dials the `kubernetes` Service's endpoints anyway.
                "--endpoint-reconciler-type=none",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--requestheader-client-ca-file={pki.ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.front_proxy_cert}",
                f"--proxy-client-key-file={pki.front_proxy_key}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        client_ssl = self._client_ssl()
        self._wait(apiserver, "/readyz", lambda: self._get_ok(f"{self.api_server_url}/readyz", client_ssl))
        self._write_kubeconfig(pki)

        # Their own serving certificates are self-signed, and /healthz is in
        # their always-allowed paths: probe them without verification.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        kcm_port, sched_port = _free_port(), _free_port()
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.work_dir / 'kcm-certs'}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--use-service-account-credentials=true",
                # One instance: taking a lease first only delays the start.
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(bins["kube-scheduler"]),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--cert-dir={self.work_dir / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(kcm, "/healthz", lambda: self._get_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure))
        self._wait(scheduler, "/healthz", lambda: self._get_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure))
        if self.with_kwok:
            popen, log, kwok_port = start_kwok(bins["kwok"], self.kubeconfig, self.log_dir, self.pod_cidr)
            kwok = _Process("kwok", popen, log)
            self._procs.append(kwok)
            self._wait(kwok, "/healthz", lambda: self._get_ok(f"http://127.0.0.1:{kwok_port}/healthz"))
        # Pods can only be created once the service-account controller has made
        # the namespace's `default` ServiceAccount: wait for the first one.
        self._wait(
            kcm,
            "the default ServiceAccount",
            lambda: self._get_ok(
                f"{self.api_server_url}/api/v1/namespaces/default/serviceaccounts/default", client_ssl
            ),
        )

    def _write_kubeconfig(self, pki: Pki) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "ebbtide-e2e",
                    "cluster": {
                        "server": self.api_server_url,
                        "certificate-authority-data": b64(pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "ebbtide-e2e-admin",
                    "user": {
                        "client-certificate-data": b64(pki.admin_cert),
                        "client-key-data": b64(pki.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "ebbtide-e2e", "context": {"cluster": "ebbtide-e2e", "user": "ebbtide-e2e-admin"}}],
            "current-context": "ebbtide-e2e",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)
