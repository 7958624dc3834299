"""An app registry that hands a SuperLink signed FABs: the part of Flower Hub's API it calls.

Flower 1.42's SuperLink attaches signatures to a run's FAB only when it fetched the app from a
registry: for `flwr run @publisher/name==x.y.z` it POSTs `{"app_id", "app_version", …}` to
`$FLWR_SUPERGRID_API_URL/hub/fetch-fab`, downloads the returned `fab_url`, and passes the
returned `verifications` on to every SuperNode, which checks them against its trusted
entities. Flower Hub (https://api.flower.ai, the default of that variable) serves that for
published apps signed with `flwr app review`; this registry serves it on a private network
for FABs signed with `deploy.app_signing`, e.g. when the hosts cannot reach the internet.

The registry needs no trust: it only carries bytes. A registry (or SuperLink) that swaps the
FAB, drops a signature or forges one gets the run refused by every SuperNode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deploy.app_signing import AppSignature, app_spec

REGISTRY_URL_ENV = "FLWR_SUPERGRID_API_URL"  # where a SuperLink looks for app registries
FETCH_PATH = "/hub/fetch-fab"
FAB_PATH = "/fab/"


class AppRegistry:
    """FABs and their signatures by `(@publisher/name, version)`, served over HTTP.

    Publish with `publish`, then `serve` while SuperLinks start runs from it.
    """

    def __init__(self) -> None:
        self._apps: dict[tuple[str, str], tuple[bytes, tuple[AppSignature, ...]]] = {}
        self._fabs: dict[str, bytes] = {}  # SHA-256 hex → FAB

    def publish(self, fab: bytes, signatures: Sequence[AppSignature]) -> str:
        """Offer `fab` with `signatures` under the id and version in its pyproject.toml.

        Returns
        -------
        str : its app spec, `@publisher/name==version`, for `flwr run`.
        """
        spec = app_spec(fab)
        app_id, version = spec.split("==")
        if (app_id, version) in self._apps and self._apps[app_id, version][0] != fab:
            raise ValueError(f"{spec} is already published with other contents")
        self._apps[app_id, version] = (fab, tuple(signatures))
        self._fabs[hashlib.sha256(fab).hexdigest()] = fab
        return spec

    def lookup(self, app_id: str, version: str) -> tuple[bytes, tuple[AppSignature, ...]]:
        """The FAB and signatures published as `app_id==version`; KeyError if none."""
        return self._apps[app_id, version]

    def fab(self, sha256_hex: str) -> bytes:
        """The FAB whose SHA-256 is `sha256_hex`; KeyError if none."""
        return self._fabs[sha256_hex]

    def versions(self, app_id: str) -> list[str]:
        """The versions of `app_id` (`@publisher/name`) published, sorted."""
        return sorted(version for published, version in self._apps if published == app_id)

    @contextlib.contextmanager
    def serve(self, host: str, port: int) -> Iterator[str]:
        """Serve the registry on `host:port` in a thread until the block ends.

        Yields
        ------
        str : the base URL, for `FLWR_SUPERGRID_API_URL` in the SuperLink's environment.
        """
        server = ThreadingHTTPServer((host, port), _handler_for(self))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://{host}:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def _handler_for(registry: AppRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != FETCH_PATH:
                self._reply(HTTPStatus.NOT_FOUND, {"detail": f"no such endpoint {self.path}"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            try:
                request = json.loads(self.rfile.read(length))
                app_id, version = str(request["app_id"]), request["app_version"]
            except (json.JSONDecodeError, KeyError, TypeError):
                self._reply(HTTPStatus.BAD_REQUEST, {"detail": "expected app_id, app_version"})
                return
            versions = registry.versions(app_id)
            if version is None or version not in versions:
                # Flower shows the versions there are; an unversioned request is refused so a
                # run always names the exact bundle its SuperNodes were asked to trust.
                self._reply(
                    HTTPStatus.NOT_FOUND,
                    {"detail": {"available_app_versions": versions}},
                )
                return
            fab, signatures = registry.lookup(app_id, str(version))
            host, port = self.server.server_address[:2]
            fab_url = f"http://{host}:{port}{FAB_PATH}{hashlib.sha256(fab).hexdigest()}"
            verifications = [json.loads(signature.to_json()) for signature in signatures]
            self._reply(HTTPStatus.OK, {"fab_url": fab_url, "verifications": verifications})

        def do_GET(self) -> None:
            digest = self.path.removeprefix(FAB_PATH)
            if not self.path.startswith(FAB_PATH):
                self._reply(HTTPStatus.NOT_FOUND, {"detail": f"no such endpoint {self.path}"})
                return
            try:
                fab = registry.fab(digest)
            except KeyError:
                self._reply(HTTPStatus.NOT_FOUND, {"detail": f"no FAB with SHA-256 {digest}"})
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(fab)))
            self.end_headers()
            self.wfile.write(fab)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: request lines would only repeat the app ids the SuperLink logs."""

        def _reply(self, status: HTTPStatus, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
