"""LiteLLM's proxy, the peer of scenarios g and h, in a virtualenv of its own that the benchmark makes.

It is not a dependency of the service. `litellm[proxy]` names a companion package (`litellm-proxy`) that
the package index here lacks, so the virtualenv gets `litellm` and the requirements of its `proxy` extra
but that one and those the proxy does not import to serve (the cloud SDKs, the pinned enterprise and
migration companions, profilers). The proxy starts with a master key and with its model cost map read
from the package (`LITELLM_LOCAL_MODEL_COST_MAP`), so it reaches no network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from testkit.processes import ServerProcess

VERSION = "1.110.2"  # the version measured in issue #14
# Requirements of the `proxy` extra left out: missing here, or not imported by a proxy serving one model.
LEFT_OUT = (
    "litellm-proxy",
    "litellm-proxy-extras",
    "litellm-enterprise",
    "polars",
    "pyroscope-io",
    "azure-identity",
    "azure-storage-blob",
)
# Outside the checkout, so that every worktree and run shares it.
HOME = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "chat-service-bench"
    / f"litellm-{VERSION}"
)

EXTRA_REQUIREMENTS = """
from importlib.metadata import requires
from packaging.requirements import Requirement
left_out = set(sys.argv[1:])
for line in requires("litellm") or []:
    requirement = Requirement(line)
    marker = requirement.marker
    if marker is not None and marker.evaluate({"extra": "proxy"}) and requirement.name not in left_out:
        print(str(requirement).split(";")[0])
"""


def _pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )


def litellm_python(smoke: bool) -> tuple[Path | None, str]:
    """The Python of LiteLLM's virtualenv, made on first use; or None and why not."""
    if smoke:
        return None, "LiteLLM is not run in a smoke run"
    python = HOME / "bin" / "python"
    ready = HOME / ".ready"
    if ready.exists():
        return python, ""
    sys.stderr.write(f"bench: installing LiteLLM {VERSION} and its proxy's imports into {HOME}...\n")
    try:
        venv.create(HOME, with_pip=True, clear=True)
        _pip(python, f"litellm=={VERSION}", "packaging")
        listed = subprocess.run(
            [str(python), "-c", "import sys\n" + EXTRA_REQUIREMENTS, *LEFT_OUT],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        _pip(python, *listed)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        output = getattr(error, "stderr", "") or str(error)
        lines = [line for line in str(output).splitlines() if line.startswith("ERROR")] or [str(error)]
        return None, f"LiteLLM could not be installed, so it is not measured: {lines[-1][:300]}"
    ready.touch()
    return python, ""


class LiteLLMProxy(ServerProcess):
    """`litellm --config` with one model, the upstream's, and one worker, on a free loopback port."""

    master_key = "sk-bench-master-key"

    def __init__(self, python: Path, log: Path, base_url: str, model: str) -> None:
        super().__init__(log)
        self.python = python
        self.config = log.with_suffix(".yaml")
        self.config.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: {base_url}\n"
            "      api_key: bench-upstream-key\n"
            "general_settings:\n"
            f"  master_key: {self.master_key}\n"
        )

    def command(self) -> list[str]:
        return [
            str(self.python.with_name("litellm")),
            "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.port),
            "--num_workers", "1",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "VIRTUAL_ENV"))
        }
        return {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def directory(self) -> Path:
        return self.log_path.parent

    def start(self, ready: str = "/health/liveliness", timeout: float = 180) -> None:
        super().start(ready, timeout)
