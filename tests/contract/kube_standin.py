"""A contract stand-in for the few Kubernetes API endpoints conveyor uses (no cluster runs here).

A threaded stdlib HTTP server on 127.0.0.1 that answers as the API server does, for:
Deployments (apps/v1), Services, Secrets, Pods and their logs (v1), HTTPRoutes
(gateway.networking.k8s.io/v1), in the namespaces it knows. Shapes follow the real API:
server-side apply (PATCH application/apply-patch+yaml, fieldManager required, creates when
absent), JSON merge patch (RFC 7386, 404 when absent), DELETE with gracePeriodSeconds, lists with
labelSelector, `Status` objects for errors (404 NotFound, 400, 415).

A tiny controller stands in for kube-controller-manager and the kubelet: on every request it
gives each Deployment its pods (a new set when the pod template changes: strategy Recreate),
marks them ready when the test's `ready(pod)` says so, and writes the Deployment's status
(replicas, readyReplicas, availableReplicas, updatedReplicas, observedGeneration, conditions).
Scaled-down pods go at once, unless `slow_termination`: then they stay (Terminating) until
deleted with gracePeriodSeconds=0, as pods whose app ignores SIGTERM do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
PATHS = re.compile(
    r"^/(?:api/v1|apis/(?P<group>apps|gateway\.networking\.k8s\.io)/v1)"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>log))?$"
)
KINDS = {
    "deployments": ("apps", "Deployment", "apps/v1"),
    "services": ("", "Service", "v1"),
    "secrets": ("", "Secret", "v1"),
    "pods": ("", "Pod", "v1"),
    "httproutes": ("gateway.networking.k8s.io", "HTTPRoute", "gateway.networking.k8s.io/v1"),
}
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def status(code: int, reason: str, message: str, **details: Any) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


class ApiFailure(Exception):
    def __init__(self, body: Obj) -> None:
        super().__init__(body["message"])
        self.body = body


def not_found(plural: str, name: str) -> ApiFailure:
    group = KINDS[plural][0]
    what = f"{plural}.{group}" if group else plural
    return ApiFailure(
        status(404, "NotFound", f'{what} "{name}" not found', name=name, group=group, kind=plural)
    )


class KubeStandIn:
    def __init__(self, namespaces: tuple[str, ...] = ("default",)) -> None:
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name)
        self.logs: dict[str, list[str]] = {}  # pod name -> lines
        self.requests: list[tuple[str, str, str]] = []  # (method, path?query, content type)
        self.ready: Callable[[Obj], bool] = lambda pod: True
        self.slow_termination = False
        self.lock = threading.RLock()
        self._rv = 0
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._serve(self, "GET")

            def do_PATCH(self) -> None:
                standin._serve(self, "PATCH")

            def do_DELETE(self) -> None:
                standin._serve(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> KubeStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "conveyor", "user": {"token": "contract-test"}}],
                    "contexts": [
                        {"name": "standin", "context": {"cluster": "standin", "user": "conveyor"}}
                    ],
                    "current-context": "standin",
                }
            )
        )
        return path

    # --- what tests look at ------------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            self._reconcile()
            found = self.objects.get((plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def put(self, obj: Obj) -> None:
        """Create an object as someone else would (kubectl), e.g. another environment's."""
        plural = obj["kind"].lower() + "s"
        with self.lock:
            self._store(plural, obj["metadata"]["namespace"], copy.deepcopy(obj))

    def pods(self, namespace: str) -> list[Obj]:
        with self.lock:
            self._reconcile()
            return [
                copy.deepcopy(o)
                for (p, ns, _), o in self.objects.items()
                if p == "pods" and ns == namespace
            ]

    # --- the API --------------------------------------------------------------------------

    def _serve(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        ctype = req.headers.get("Content-Type", "").split(";")[0]
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, req.path, ctype))
        match = PATHS.match(parts.path)
        try:
            if match is None or match["plural"] not in KINDS:
                raise ApiFailure(
                    status(404, "NotFound", "the server could not find the requested resource")
                )
            plural, ns, name = match["plural"], match["ns"], match["name"]
            if ns not in self.namespaces:
                raise ApiFailure(
                    status(
                        404, "NotFound", f'namespaces "{ns}" not found', name=ns, kind="namespaces"
                    )
                )
            if match["sub"] == "log":
                self._log(req, ns, name or "", query)
                return
            with self.lock:
                self._reconcile()
                code, answer = self._handle(method, plural, ns, name, query, ctype, body)
                self._reconcile()
        except ApiFailure as exc:
            code, answer = exc.body["code"], exc.body
        data = json.dumps(answer).encode()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _handle(
        self,
        method: str,
        plural: str,
        ns: str,
        name: str | None,
        query: dict[str, str],
        ctype: str,
        body: bytes,
    ) -> tuple[int, Obj]:
        key = (plural, ns, name or "")
        if method == "GET" and name is None:
            wanted = dict(
                pair.split("=", 1) for pair in query.get("labelSelector", "").split(",") if pair
            )
            items = [
                copy.deepcopy(o)
                for (p, n, _), o in sorted(self.objects.items())
                if p == plural
                and n == ns
                and all(o["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
            ]
            _group, kind, api = KINDS[plural]
            return 200, {"kind": f"{kind}List", "apiVersion": api, "metadata": {}, "items": items}
        assert name is not None
        existing = self.objects.get(key)
        if method == "GET":
            if existing is None:
                raise not_found(plural, name)
            return 200, copy.deepcopy(existing)
        if method == "DELETE":
            if existing is None:
                raise not_found(plural, name)
            grace = query.get("gracePeriodSeconds")
            if plural == "pods" and self.slow_termination and grace != "0":
                existing["metadata"]["deletionTimestamp"] = _now()
                return 200, copy.deepcopy(existing)
            del self.objects[key]
            if plural == "deployments":
                for pod in self._pods_of(ns, name):
                    self.objects.pop(("pods", ns, pod["metadata"]["name"]), None)
            return 200, status(200, "", "", name=name, kind=plural)
        if method != "PATCH":
            raise ApiFailure(status(405, "MethodNotAllowed", f"{method} is not supported here"))
        try:
            patch = json.loads(body)
        except ValueError:
            raise ApiFailure(status(400, "BadRequest", "the body is not JSON or YAML")) from None
        if ctype == APPLY:
            if not query.get("fieldManager"):
                raise ApiFailure(
                    status(
                        400,
                        "BadRequest",
                        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                        "is required for apply patch",
                    )
                )
            _group, kind, api = KINDS[plural]
            if patch.get("kind") != kind or patch.get("apiVersion") != api:
                raise ApiFailure(
                    status(400, "BadRequest", f"apply of a {patch.get('kind')} to {plural}")
                )
            if patch.get("metadata", {}).get("name") != name:
                raise ApiFailure(
                    status(400, "BadRequest", "the name of the object does not match the URL")
                )
            if existing is None:
                return 201, self._store(plural, ns, patch)
            return 200, self._reapply(existing, patch)
        if ctype == MERGE:
            if existing is None:
                raise not_found(plural, name)
            merged = merge_patch(existing, patch)
            if merged.get("spec") != existing.get("spec"):
                merged["metadata"]["generation"] = existing["metadata"].get("generation", 1) + 1
            merged["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[key] = merged
            return 200, copy.deepcopy(merged)
        raise ApiFailure(
            status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: {APPLY}, {MERGE}",
            )
        )

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(self, plural: str, ns: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.update(
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
        )
        if plural == "deployments":
            meta["generation"] = 1
            obj["status"] = {}
        if plural == "services":
            obj["spec"]["clusterIP"] = f"10.96.0.{len(self.objects) % 250 + 1}"
        self.objects[(plural, ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def _reapply(self, existing: Obj, applied: Obj) -> Obj:
        # One field manager applying its whole intent: its fields become what it applied now;
        # what the server itself set (uid, clusterIP, status) stays.
        new = copy.deepcopy(existing)
        for field in ("labels", "annotations"):
            if field in applied["metadata"]:
                new["metadata"][field] = copy.deepcopy(applied["metadata"][field])
            else:
                new["metadata"].pop(field, None)
        for key, value in applied.items():
            if key not in ("metadata", "status", "apiVersion", "kind"):
                new[key] = copy.deepcopy(value)
        if "clusterIP" in existing.get("spec", {}):
            new["spec"]["clusterIP"] = existing["spec"]["clusterIP"]
        if new.get("spec") != existing.get("spec") and "generation" in existing["metadata"]:
            new["metadata"]["generation"] = existing["metadata"]["generation"] + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        plural = existing["kind"].lower() + "s"
        self.objects[(plural, existing["metadata"]["namespace"], existing["metadata"]["name"])] = (
            new
        )
        return copy.deepcopy(new)

    # --- the controller and the kubelet -------------------------------------------------------

    def _pods_of(self, ns: str, deployment: str) -> list[Obj]:
        return [
            o
            for (p, n, _), o in self.objects.items()
            if p == "pods"
            and n == ns
            and o["metadata"].get("ownerReferences", [{}])[0].get("name") == deployment
        ]

    def _reconcile(self) -> None:
        for (plural, ns, name), dep in list(self.objects.items()):
            if plural != "deployments":
                continue
            template = dep["spec"]["template"]
            digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
            want = dep["spec"].get("replicas", 1)
            pods = self._pods_of(ns, name)
            for pod in pods:
                stale = pod["metadata"]["labels"].get("pod-template-hash") != digest
                if pod["metadata"].get("deletionTimestamp"):
                    continue
                if (
                    stale
                    or len(
                        [
                            p
                            for p in self._pods_of(ns, name)
                            if not p["metadata"].get("deletionTimestamp")
                        ]
                    )
                    > want
                ):
                    if self.slow_termination:
                        pod["metadata"]["deletionTimestamp"] = _now()
                    else:
                        del self.objects[("pods", ns, pod["metadata"]["name"])]
            live = [
                p for p in self._pods_of(ns, name) if not p["metadata"].get("deletionTimestamp")
            ]
            for _ in range(len(live), want):
                pod_name = f"{name}-{digest}-{uuid.uuid4().hex[:5]}"
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": ns,
                        "uid": str(uuid.uuid4()),
                        "labels": {**template["metadata"]["labels"], "pod-template-hash": digest},
                        "annotations": dict(template["metadata"].get("annotations", {})),
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "ReplicaSet",
                                "name": name,
                                "uid": dep["metadata"]["uid"],
                            }
                        ],
                    },
                    "spec": copy.deepcopy(template["spec"]),
                    "status": {"phase": "Running"},
                }
                self.objects[("pods", ns, pod_name)] = pod
                version = template["metadata"]["labels"].get("conveyor.dev/version", "")
                self.logs[pod_name] = [f"{pod_name} starting {version}", f"{pod_name} listening"]
            live = [
                p for p in self._pods_of(ns, name) if not p["metadata"].get("deletionTimestamp")
            ]
            ready = 0
            for pod in live:
                ok = self.ready(pod)
                pod["status"]["conditions"] = [{"type": "Ready", "status": str(ok)}]
                ready += ok
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": len(self._pods_of(ns, name)),
                "updatedReplicas": len(live),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    {
                        "type": "Available",
                        "status": str(ready >= want),
                        "reason": "MinimumReplicasAvailable"
                        if ready >= want
                        else "MinimumReplicasUnavailable",
                    },
                ],
            }

    def _log(self, req: BaseHTTPRequestHandler, ns: str, pod: str, query: dict[str, str]) -> None:
        with self.lock:
            exists = ("pods", ns, pod) in self.objects
            lines = list(self.logs.get(pod, []))
        if not exists:
            body = json.dumps(
                status(404, "NotFound", f'pods "{pod}" not found', name=pod, kind="pods")
            ).encode()
            req.send_response(404)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
            return
        tail = int(query.get("tailLines") or 0)
        if tail:
            lines = lines[-tail:]
        req.send_response(200)
        req.send_header("Content-Type", "text/plain")
        if query.get("follow") != "true":
            data = "".join(line + "\n" for line in lines).encode()
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
            return
        # Following: what is there, then each new line, until the pod is gone (or the client
        # hangs up); the body ends with the connection, as HTTP/1.0 allows.
        req.send_header("Connection", "close")
        req.end_headers()
        sent = 0
        try:
            while True:
                with self.lock:
                    # A copy: a line appended while these are written must be sent next time,
                    # not counted as sent (that lost line timed a test out under load).
                    lines = list(self.logs.get(pod, []))
                    alive = ("pods", ns, pod) in self.objects
                for line in lines[sent:]:
                    req.wfile.write((line + "\n").encode())
                req.wfile.flush()
                sent = len(lines)
                if not alive:
                    return
                time.sleep(0.02)
        except OSError:
            return


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def serve(tmp_path: Path, namespaces: tuple[str, ...] = ("shop",)) -> Iterator[KubeStandIn]:
    """A running stand-in, with KUBECONFIG pointing at it while the test runs."""
    import os

    with KubeStandIn(namespaces) as standin:
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(standin.kubeconfig(tmp_path / "kubeconfig"))
        try:
            yield standin
        finally:
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old
