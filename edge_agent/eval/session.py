"""Where an evaluation's prompts go: a local mesh started for it (like `demo`) or an existing one (`--broker`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

from ..errors import ConfigError
from ..mqtt.client import MoaClient
from .grid import EvalConfig
from .instructions import Instruction
from .outputs import OutputFile
from .queue_watch import QueueWatch
from .runner import run_config

log = logging.getLogger(__name__)


@contextlib.contextmanager
def local_mesh(models: list[str], *, threads: int, max_new_tokens: int, workdir) -> Iterator[tuple]:
    """A broker and one agent per model; yields (client, devices, token counter of the first model)."""
    from ..artifact.store import resolve_model_dir
    from ..local.mesh import LocalMesh

    dirs = [resolve_model_dir(m) for m in models]
    per_agent = {f"agent{i}": {"model": str(d)} for i, d in enumerate(dirs, 1)}
    limit = max(512, max_new_tokens)
    if workdir is not None:  # each run its own: LocalMesh reuses an agent.toml it finds (with an old broker port)
        workdir = workdir / time.strftime("run-%Y%m%d-%H%M%S")
    print(f"local mesh: {len(dirs)} agents ({', '.join(sorted({d.name for d in dirs}))}), "
          f"{threads} thread(s) each; loading...", file=sys.stderr, flush=True)
    started = time.monotonic()
    with LocalMesh(len(dirs), engine={"threads": threads}, engine_per_agent=per_agent, workdir=workdir,
                   moa={"max_new_tokens": min(max_new_tokens, limit), "max_new_tokens_limit": limit,
                        "request_timeout_s": 3600.0}) as mesh:
        print(f"ready in {time.monotonic() - started:.1f}s (logs in {mesh.workdir})", file=sys.stderr, flush=True)
        with mesh.client() as client:
            yield client, mesh.devices, token_counter(dirs[0])


def token_counter(model_dir) -> Callable[[str], int] | None:
    """Counts an output's tokens with the board model's own tokenizer (the `tokenizers` library, no engine)."""
    try:
        from tokenizers import Tokenizer

        from ..artifact.manifest import read_manifest

        tokenizer = Tokenizer.from_file(str(model_dir / read_manifest(model_dir).tokenizer))
    except Exception as exc:  # noqa: BLE001  # token counts are a nicety: say why they are missing
        log.warning("no token counts: %s", exc)
        return None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def run_eval(args: argparse.Namespace, items: list[Instruction], configs: list[EvalConfig],
             models: list[str]) -> int:
    if args.broker:
        from ..cli import broker_from_args

        if not args.device:
            raise ConfigError([("--device", None, "--broker needs --device (the agent(s) to ask)")])
        devices = [d.strip() for d in args.device.split(",")]
        with MoaClient(broker_from_args(args), topic_root=args.topic_root) as client:
            client.wait_for_agents(devices, timeout_s=30)
            return _run_all(args, client, devices, items, configs, None)
    with local_mesh(models, threads=args.threads, max_new_tokens=args.max_new_tokens,
                    workdir=args.workdir) as (client, devices, count_tokens):
        devices = [d.strip() for d in args.device.split(",")] if args.device else devices[:1]
        return _run_all(args, client, devices, items, configs, count_tokens)


def _run_all(args, client, devices, items, configs, count_tokens) -> int:
    failed = 0
    client.watch_status()
    queue = QueueWatch(client.statuses)
    queue.start()
    try:
        for n, config in enumerate(configs, 1):
            out = OutputFile(args.out, config.generator)
            print(f"[{n}/{len(configs)}] {config.generator}: {len(out)}/{len(items)} already done -> {out.path}",
                  file=sys.stderr, flush=True)
            failed += run_config(client, config, items, out, devices=devices, parallel=args.parallel,
                                 timeout_s=args.timeout, max_new_tokens=args.max_new_tokens,
                                 count_tokens=count_tokens, seed=args.seed, queue=queue)
    finally:
        queue.stop()
    if failed:
        print(f"{failed} answer(s) came back as errors (see the warnings); run again to retry them", file=sys.stderr)
    return 1 if failed else 0
