"""``rankengine serve``: serve a registry reference over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from rankengine.cli.common import URL_HELP, device_option, finite, open_store

if TYPE_CHECKING:
    import torch


@click.command()
@click.argument("ref")
@click.option("--registry", default=None, help=URL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; one that is not loopback needs an admin token")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="server processes")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 256),
              help="inference threads per process (the cores are split into torch threads "
                   "over workers x threads)")
@click.option("--poll-interval", default=30.0, show_default=True,
              type=click.FloatRange(0.1, 86400.0), callback=finite,
              help="seconds between registry checks for a moved alias")
@click.option("--max-candidates", default=2000, show_default=True,
              type=click.IntRange(1, 1_000_000), help="rows per request; more is a 400")
@click.option("--max-body-bytes", default=8 << 20, show_default=True,
              type=click.IntRange(1, 1 << 30),
              help="request body size; larger is a 413, refused by its Content-Length or "
                   "as soon as a streamed body passes it")
@click.option("--max-fusion-weight", default=100.0, show_default=True,
              type=click.FloatRange(0.0, 1e6, min_open=True), callback=finite,
              help="upper bound of per-request fusion_weights")
@click.option("--admin-token", envvar="RANKENGINE_ADMIN_TOKEN", default=None,
              show_envvar=True,
              help="required as 'Authorization: Bearer TOKEN' by POST "
                   "/v2/repository/models/NAME/load; needed when --host is not loopback "
                   "(prefer the environment variable: arguments show in ps)")
@click.option("--backend", default=None, metavar="NAME",
              help="the serving back end that runs the forward pass: one registered by the "
                   "model's plugins (`rankengine plugins` lists them); default: their default "
                   "back end")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="one log line per request (uvicorn's access log)")
@device_option
def serve(ref: str, registry: str | None, host: str, port: int, workers: int, threads: int,
          poll_interval: float, max_candidates: int, max_body_bytes: int,
          max_fusion_weight: float, admin_token: str | None, backend: str | None,
          access_log: bool, device: torch.device) -> None:
    """Serve NAME[@ALIAS|/VERSION] over HTTP (Open Inference Protocol v2 + /v1/rank)."""
    import json as json_lib
    import os

    import uvicorn

    from rankengine.serve import ENV
    from rankengine.serve.access import ADMIN_TOKEN_ENV, is_loopback
    from rankengine.serve.holder import engine_of, serving_backend
    from rankengine.serve.http import NoDelayHTTPProtocol
    from rankengine.serve.process import usable_cores

    admin_token = admin_token or None  # an empty variable is no token
    exposed = not is_loopback(host)
    if exposed and admin_token is None:
        raise click.UsageError(f"--host {host} is not a loopback address: give an admin token "
                               f"(--admin-token or {ADMIN_TOKEN_ENV}) to guard POST "
                               f"/v2/repository/models/NAME/load")
    store = open_store(registry)  # fail fast: no registry, schema, name, alias
    target = store.resolve(ref)
    url = store.url
    store.close()  # the server processes open their own
    engine = engine_of(target)  # fail fast: an unknown back end, a missing dependency
    serving_backend(engine, backend, target.ref).check_available()
    backend_name = backend or engine.components.backends.default().name
    # Every server process applies this budget itself (rankengine.serve.app_from_env).
    per_thread = max(1, usable_cores() // (threads * workers))  # no oversubscribed cores
    os.environ[ENV] = json_lib.dumps({
        "registry": url, "ref": ref, "backend": backend, "torch_threads": per_thread,
        "device": str(device),
        "settings": {"threads": threads, "poll_interval": poll_interval,
                     "max_candidates": max_candidates, "max_body_bytes": max_body_bytes,
                     "max_fusion_weight": max_fusion_weight, "admin_token": admin_token},
    })
    click.echo(f"serving {ref} from {url} on http://{host}:{port} ({workers} worker(s), "
               f"{threads} inference thread(s) each with {per_thread} torch thread(s), "
               f"{backend_name} back end)", err=True)
    if exposed:
        click.echo(f"WARNING: {host} is reachable from other machines and only the admin "
                   f"endpoint checks a token: /v1/rank, /v2 (inference, metadata, health) and "
                   f"/metrics are unauthenticated; put an authenticating proxy in front if "
                   f"that matters", err=True)
    uvicorn.run("rankengine.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", access_log=access_log,
                http=NoDelayHTTPProtocol, timeout_graceful_shutdown=10)
