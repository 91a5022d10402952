"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint.

OpenAI itself, or vLLM, Ollama, llama.cpp server, LM Studio through ``base_url``. The
``openai`` package is imported only when this backend is used, so commands that never
talk to an LLM do not pay for it.

The key comes from ``PERFPILOT_API_KEY``, else ``OPENAI_API_KEY`` -- never from a file
in the project (a repository is the last place a key should live). A local server
(``127.0.0.1``/``localhost``) needs no key. Retries with exponential backoff on 408,
409, 429 and 5xx and on connection errors are the SDK's (``llm_retries``; it honours
``Retry-After``); each request times out after ``llm_timeout``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from perfpilot.agent.backends import Messages
from perfpilot.agent.backends.errors import BackendError
from perfpilot.config import Settings
from perfpilot.hookspecs import hookimpl

DEFAULT_MODEL = "gpt-4.1"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEY_VARIABLES = ("PERFPILOT_API_KEY", "OPENAI_API_KEY")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def find_api_key(environ: Mapping[str, str], base_url: str) -> str:
    for name in KEY_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return value
    if (urlparse(base_url).hostname or "") in LOCAL_HOSTS:
        return "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
    raise BackendError(
        f"no API key for the openai backend at {base_url}",
        hint="export PERFPILOT_API_KEY=... (or OPENAI_API_KEY); keys are never read from files in the project",
    )


class OpenAIBackend:
    name = "openai"

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        import openai  # lazily: only `optimize` with this backend pays for the import

        self._openai = openai
        self.base_url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.model = settings.model or DEFAULT_MODEL
        self.timeout = float(settings.llm_timeout)
        self.retries = max(0, int(settings.llm_retries))
        key = find_api_key(os.environ if environ is None else environ, self.base_url)
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout,
                                    max_retries=self.retries)
        # No record of requests: the daemon asks for as long as it runs. What was sent is kept by the
        # callers that promise it (the optimiser's report, the daemon's store, pytest's JSON).

    def complete(self, messages: Messages) -> str:
        openai = self._openai
        where = f"{self.base_url} (model {self.model!r})"
        try:
            response: Any = self.client.chat.completions.create(model=self.model, messages=messages)
        except openai.AuthenticationError as exc:
            raise BackendError(f"authentication failed at {self.base_url} (HTTP {exc.status_code})",
                               hint="check PERFPILOT_API_KEY / OPENAI_API_KEY") from None
        except openai.PermissionDeniedError as exc:
            raise BackendError(f"permission denied at {where} (HTTP {exc.status_code})",
                               hint="does this key have access to that model?") from None
        except openai.NotFoundError as exc:
            raise BackendError(f"model {self.model!r} not found at {self.base_url} (HTTP {exc.status_code})",
                               hint="check --model, and that --base-url ends with /v1") from None
        except openai.RateLimitError as exc:
            raise BackendError(f"rate limited by {where} (HTTP {exc.status_code}) after {self.retries} retries",
                               hint="wait and retry, or raise llm_retries") from None
        except openai.APITimeoutError:
            raise BackendError(f"no reply from {where} within {self.timeout:g}s (after {self.retries} retries)",
                               hint="raise llm_timeout, or check the server") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise BackendError(f"cannot reach {self.base_url}: {type(cause).__name__}: {cause}".rstrip(": "),
                               hint="is the server running? check --base-url") from None
        except openai.BadRequestError as exc:
            raise BackendError(f"request rejected by {where} (HTTP 400): {_message(exc)}",
                               hint="if the prompt is too long, lower context_tokens") from None
        except openai.APIStatusError as exc:
            raise BackendError(f"server error HTTP {exc.status_code} from {where} after {self.retries} retries: "
                               f"{_message(exc)}") from None
        except openai.APIError as exc:
            raise BackendError(f"bad reply from {where}: {exc}") from None
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        if not content:
            raise BackendError(f"empty reply from {where}", hint="the model returned no text")
        return str(content)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]


@hookimpl
def perfpilot_register_backends(register: Callable[..., None]) -> None:
    register("openai", OpenAIBackend)
