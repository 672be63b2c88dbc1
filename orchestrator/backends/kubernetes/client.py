"""The Kubernetes API as the backend uses it: one client, one retry policy, plain dicts.

Uses the official ``kubernetes`` client (kubeconfig with an optional context, else the
in-cluster config), created lazily; tests inject an ``ApiClient`` pointed at a stand-in
API server. Objects are handled as plain dicts (responses are read with
``_preload_content=False``): the generated model classes add nothing here and reject the
partial objects some servers return.

- **Retries.** 429, 500, 502, 503 and 504 answers, timeouts and dropped connections are
  retried (``RetryPolicy.attempts`` tries in all) after ``Retry-After`` when the server
  sends one, else after an exponential back-off with jitter (``orchestrator.common.retry``,
  on tenacity). The pod watch pauses by the same policy. urllib3's own retries are
  switched off: they cannot honour our injected clock, and they would hide that a create
  was retried. What retries could not fix is ``ClusterUnavailable`` (exit 69,
  ``EXIT_TRANSIENT``: try again later), unlike a refusal (401/403/422: exit 2) or another
  answer (exit 1).
- **Fail fast.** A server that cannot be connected to at all (connection refused, unknown
  host, no answer within the connect timeout, 5 s) on the first request is not retried: a
  wrong kubeconfig or context, or a cluster that is down, says so in one line at once
  instead of after the whole back-off. Once the server has answered, a failed connection
  is retried like any other transient failure (a restarting API server mid-watch).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from orchestrator.common.retry import Backoff, RetryPolicy, call_with_retries
from orchestrator.errors import EXIT_FAILED, EXIT_TRANSIENT, BadInput, EarlyRepairError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Six tries over about 12 s (0.5 s doubling to at most 10 s, with jitter), or what the
# server asks for with Retry-After, up to a minute.
KUBERNETES_RETRY = RetryPolicy(attempts=6, backoff=Backoff(0.5, 10.0, jitter=True))


class ClusterError(EarlyRepairError):
    """The Kubernetes API could not do what we asked (after retries)."""

    exit_code = EXIT_FAILED


class ClusterUnavailable(ClusterError):
    """The Kubernetes API could not be reached, or kept failing after retries: try later."""

    exit_code = EXIT_TRANSIENT


@dataclass(frozen=True)
class Timeouts:
    """How long one request may take: to connect, to read an answer, and how long the
    server keeps one pod watch open before we start the next."""

    connect_s: float = 5.0
    read_s: float = 60.0
    watch_s: int = 300

    @property
    def request(self) -> tuple[float, float]:
        """urllib3's ``(connect, read)`` timeout of one ordinary request."""
        return (self.connect_s, self.read_s)


@dataclass
class Tries:
    """How many times one request was sent (a create tried twice may have succeeded)."""

    count: int = 0


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def api_message(exc: Any) -> str:
    """The API's own one-line message from an ApiException body (a Status object)."""
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        data = {}
    msg = data.get("message") if isinstance(data, dict) else None
    return " ".join(str(msg or getattr(exc, "reason", "") or "").split())


def retry_after(exc: Any, now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``: seconds or an HTTP date)."""
    headers = getattr(exc, "headers", None) or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - now())
    except (TypeError, ValueError):
        return None


def _after(tries: int) -> str:
    return f" after {tries} tries" if tries > 1 else ""


class KubeClient:
    """The API groups the backend calls, each request retried by ``retry``."""

    def __init__(
        self,
        *,
        context: str | None = None,
        api_client: Any = None,
        retry: RetryPolicy = KUBERNETES_RETRY,
        timeouts: Timeouts = Timeouts(),
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.context = context
        self._api_client = api_client
        self.retry = retry
        self.timeouts = timeouts
        self.sleep = sleep
        self.rand = rand
        self._core: Any = None
        self._batch: Any = None
        self._custom: Any = None
        self._reached = False  # the API server has answered at least once

    def api_client(self) -> Any:
        if self._api_client is None:
            self._api_client = load_api_client(self.context)
        return self._api_client

    @property
    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(self.api_client())
        return self._core

    @property
    def batch(self) -> Any:
        if self._batch is None:
            from kubernetes import client

            self._batch = client.BatchV1Api(self.api_client())
        return self._batch

    @property
    def custom(self) -> Any:
        if self._custom is None:
            from kubernetes import client

            self._custom = client.CustomObjectsApi(self.api_client())
        return self._custom

    def host(self) -> str:
        cfg = getattr(self.api_client(), "configuration", None)
        return getattr(cfg, "host", "?")

    def request(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        tries: Tries | None = None,
        retry: bool = True,
        raw: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``fn`` with retries; the parsed JSON body (or the raw response if ``raw``).

        An ApiException that retries could not fix propagates (``fail`` words it); a
        connection that kept failing is ``ClusterUnavailable``.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        tries = tries or Tries()
        kwargs.setdefault("_request_timeout", self.timeouts.request)

        def once() -> Any:
            tries.count += 1
            try:
                resp = fn(*args, _preload_content=False, **kwargs)
            except ApiException:
                self._reached = True  # an error status is an answer: the server is there
                raise
            self._reached = True
            if raw:
                return resp
            body = resp.data
            return json.loads(body) if body else {}

        def retryable(e: BaseException) -> bool:
            if isinstance(e, ApiException):
                return e.status in RETRY_STATUS
            if isinstance(e, urllib3.exceptions.ConnectTimeoutError):  # refused, unknown host
                return self._reached
            return isinstance(e, urllib3.exceptions.HTTPError)

        def on_retry(e: BaseException, delay: float) -> None:
            why = f"API answered {e.status}" if isinstance(e, ApiException) else type(e).__name__
            log.info("%s: %s, retrying in %.1fs", what, why, delay)

        try:
            return call_with_retries(
                once,
                self.retry,
                retryable=retryable,
                retry_after=lambda e: retry_after(e) if isinstance(e, ApiException) else None,
                on_retry=on_retry,
                sleep=self.sleep,
                rand=self.rand,
                attempts=None if retry else 1,
            )
        except urllib3.exceptions.ConnectTimeoutError as e:
            raise ClusterUnavailable(
                f"{what}: cannot reach the Kubernetes API at {self.host()}"
                f" ({self._connect_problem(e)}{_after(tries.count)}): check that the"
                " cluster is up and that KUBECONFIG / --context point at it"
            ) from e
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnavailable(
                f"{what}: cannot reach the Kubernetes API at {self.host()}"
                f" ({type(e).__name__}) after {tries.count} tries"
            ) from e

    def _connect_problem(self, e: Exception) -> str:
        """``connection refused``, ``host name not resolved`` or ``no answer within 5 s``."""
        import urllib3

        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return "host name not resolved"
        if isinstance(e, urllib3.exceptions.NewConnectionError):
            why = str(e).rpartition(": ")[2]
            return " ".join(why.split("] ")[-1].split()).lower() or "connection failed"
        return f"no answer within {self.timeouts.connect_s:g} s"

    def fail(self, e: Any, what: str, namespace: str) -> EarlyRepairError:
        """Our error for an ApiException that retries could not fix."""
        status, msg = getattr(e, "status", None), api_message(e)
        if status == 401:
            return BadInput(
                f"{what}: the Kubernetes API refused our credentials (401): check"
                " your kubeconfig or --context"
            )
        if status == 403:
            return BadInput(
                f"{what}: forbidden in namespace {namespace!r} (403): bind the submitter Role"
                f" from k8s/rbac.yaml to your user ({msg})"
            )
        if status == 422 or status == 400:
            return BadInput(f"{what}: the API server rejected it ({status}): {msg}")
        if status in RETRY_STATUS:
            return ClusterUnavailable(
                f"{what}: the Kubernetes API kept answering {status} ({msg}); try again later"
            )
        return ClusterError(f"{what}: the Kubernetes API answered {status}: {msg}")

    def call(self, what: str, namespace: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        """``request``, with an unfixed ApiException as our error."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.request(what, fn, *a, **kw)
        except ApiException as e:
            raise self.fail(e, what, namespace) from e

    def list(self, what: str, fn: Callable[..., Any], namespace: str, selector: str) -> Any:
        return self.call(f"list {what}", namespace, fn, namespace, label_selector=selector)

    def get(self, what: str, fn: Callable[..., Any], name: str, namespace: str) -> Any:
        """The object, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.request(f"get {what}/{name}", fn, name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise self.fail(e, f"get {what}/{name}", namespace) from e

    def pause(self, failures: int, after: float | None, what: str, why: str) -> None:
        """Wait before trying ``what`` again after ``failures`` failures in a row, by the
        same policy as a request; ``ClusterUnavailable`` once they are ``attempts``."""
        if failures >= self.retry.attempts:
            raise ClusterUnavailable(
                f"{what}: gave up after {failures} failures in a row ({why}); try again later"
            )
        delay = self.retry.delay(failures, after, self.rand)
        log.info("%s: %s; trying again in %.1fs", what, why, delay)
        self.sleep(delay)


def load_api_client(context: str | None = None) -> Any:
    """An ApiClient from the kubeconfig (optionally a named context) or the in-cluster config.

    urllib3's retries are off: ``KubeClient`` retries itself (see the module doc).
    """
    import os

    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        # KUBECONFIG is read now, not when the kubernetes package was imported.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
    except (config.ConfigException, OSError, TypeError, ValueError) as e:
        if context:
            raise BadInput(f"--context: cannot use context {context!r}: {e}") from e
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException as e2:
            raise BadInput(
                "no Kubernetes configuration: set KUBECONFIG (or write ~/.kube/config), or"
                " run inside a cluster"
            ) from e2
    cfg.retries = False
    return client.ApiClient(cfg)
