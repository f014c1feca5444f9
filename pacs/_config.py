"""How to reach a PACS: its DICOMweb URL (or DIMSE address), credentials, TLS, timeouts and retries.

Credentials come from the environment (``DXGRAPH_PACS_USERNAME`` and ``DXGRAPH_PACS_PASSWORD`` for basic
authentication, or ``DXGRAPH_PACS_TOKEN`` for a bearer token) or from a config file, never from the command
line and never into a trace. The file is ``$DXGRAPH_PACS_CONFIG`` or ``~/.config/dxgraph/pacs.yaml``; like
ssh, dxgraph refuses one that others may read. It lists servers by URL::

    pacs:
      - url: https://pacs.example.org/dicom-web/
        username: dxgraph          # or token: <bearer token>
        password: s3cret
        ca_bundle: /etc/ssl/hospital-ca.pem   # TLS verification is on; verify_tls: false turns it off
        connect_timeout_s: 5
        read_timeout_s: 60
        retries: 3

The entry whose URL is the longest prefix of the URL asked for applies; the environment's credentials win
over the file's.

A PACS without DICOMweb is reached over DIMSE with a URL ``dicom://CALLED_AET@host:port`` (the PACS's AE
title, host and DICOM port; C-FIND, C-GET and C-STORE, see ``DimseClient``). dxgraph's own (calling) AE
title is ``DXGRAPH`` unless ``$DXGRAPH_PACS_AET`` or the file's ``calling_aet`` says otherwise; the PACS
must know it. The connect timeout bounds the TCP connection and the association's negotiation, the read
timeout each DIMSE answer. DIMSE has no credentials (a URL's password is refused) and dxgraph speaks it
without TLS: use it on a trusted network only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from dxgraph.errors import UserError

if TYPE_CHECKING:
    from dxgraph.pacs._dicomweb import Pacs

ENV_USERNAME, ENV_PASSWORD, ENV_TOKEN = "DXGRAPH_PACS_USERNAME", "DXGRAPH_PACS_PASSWORD", "DXGRAPH_PACS_TOKEN"
"""Environment variables holding the credentials."""
ENV_CONFIG = "DXGRAPH_PACS_CONFIG"
"""Environment variable naming the config file."""
ENV_CA_BUNDLE = "DXGRAPH_PACS_CA_BUNDLE"
"""Environment variable naming a CA bundle to verify the PACS's TLS certificate with."""
ENV_AET = "DXGRAPH_PACS_AET"
"""Environment variable holding dxgraph's own (calling) AE title for DIMSE."""
DEFAULT_AET = "DXGRAPH"
"""dxgraph's calling AE title for DIMSE unless configured."""
DIMSE_SCHEME = "dicom"
"""URL scheme of a PACS reached over DIMSE: ``dicom://CALLED_AET@host:port``."""
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class PacsAuth(BaseModel):
    """Credentials for the PACS; the secrets never print (``SecretStr``)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    kind: Literal["none", "basic", "bearer"] = "none"
    """``none``, ``basic`` (username and password) or ``bearer`` (a token)."""
    username: str | None = None
    """User name for basic authentication."""
    password: SecretStr | None = None
    """Password for basic authentication."""
    token: SecretStr | None = None
    """Bearer token."""


class PacsConfig(BaseModel):
    """One PACS: where it is, how to authenticate, TLS, timeouts and retries."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    url: str
    """DICOMweb base URL (the root under which ``studies`` lies), without credentials; or for DIMSE
    ``dicom://CALLED_AET@host:port``."""
    auth: PacsAuth = PacsAuth()
    """Credentials."""
    verify_tls: bool = True
    """Verify the server's TLS certificate (on by default; off only when a config file says so)."""
    ca_bundle: Path | None = None
    """CA bundle to verify the certificate with, instead of the system's."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Seconds to wait for a connection."""
    read_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for the server between bytes of an answer."""
    retries: int = Field(default=3, ge=0)
    """Retries of a request that got no connection, HTTP 429 or a 5xx (each after a growing pause)."""
    backoff_s: float = Field(default=0.5, ge=0)
    """First pause before a retry, doubled on each further retry."""
    allow_plain_http: bool = False
    """Send credentials over plain HTTP to a host other than loopback (off: refused)."""
    calling_aet: str = Field(default=DEFAULT_AET, pattern=r"^[ -\[\]-~]{1,16}$")
    """dxgraph's own AE title for DIMSE (1 to 16 printable characters, no backslash); unused for DICOMweb."""

    @property
    def is_dimse(self) -> bool:
        """Whether the PACS is reached over DIMSE (a ``dicom://`` URL) rather than DICOMweb."""
        return urlsplit(self.url).scheme == DIMSE_SCHEME

    @property
    def host(self) -> str:
        """``scheme://host[:port]`` of the PACS (``dicom://AET@host:port`` for DIMSE): what traces and
        messages name (never credentials)."""
        parts = urlsplit(self.url)
        aet = f"{parts.username}@" if self.is_dimse and parts.username else ""
        return f"{parts.scheme}://{aet}{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"

    def connect(self) -> Pacs:
        """A client for this PACS: ``DimseClient`` for a ``dicom://`` URL, ``PacsClient`` (DICOMweb) otherwise."""
        if self.is_dimse:
            from dxgraph.pacs._dimse import DimseClient

            return DimseClient(self)
        from dxgraph.pacs._dicomweb import PacsClient

        return PacsClient(self)

    @property
    def base_url(self) -> str:
        """The URL without a trailing slash."""
        return self.url.rstrip("/")

    @classmethod
    def load(
        cls,
        url: str,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        **overrides: Any,
    ) -> PacsConfig:
        """The configuration for ``url``: its config-file entry, the environment's credentials and ``overrides``."""
        env = os.environ if environ is None else environ
        _check_url(url)
        entry = _file_entry(url, _config_path(env, config_file))
        fields: dict[str, Any] = {
            k: v for k, v in entry.items() if k not in ("url", "username", "password", "token")
        }
        auth = _auth(entry.get("username"), entry.get("password"), entry.get("token"), "the config file")
        env_auth = _auth(env.get(ENV_USERNAME), env.get(ENV_PASSWORD), env.get(ENV_TOKEN), "the environment")
        if env_auth.kind != "none":
            auth = env_auth
        if env.get(ENV_CA_BUNDLE):
            fields["ca_bundle"] = env[ENV_CA_BUNDLE]
        if env.get(ENV_AET):
            fields["calling_aet"] = env[ENV_AET]
        fields |= overrides
        try:
            config = cls(url=url, auth=auth, **fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UserError(f"PACS configuration for {url}: {where}: {first['msg']}") from None
        config._check_transport()
        return config

    def _check_transport(self) -> None:
        parts = urlsplit(self.url)
        if (
            parts.scheme == "http"
            and self.auth.kind != "none"
            and (parts.hostname or "") not in _LOOPBACK
            and not self.allow_plain_http
        ):
            raise UserError(
                f"refusing to send credentials to {self.host} over plain HTTP: use https, or set"
                " allow_plain_http: true for it in the PACS config file"
            )
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise UserError(f"the CA bundle {self.ca_bundle} does not exist")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == DIMSE_SCHEME:
        _check_dimse_url(url)
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{url!r} is not a DICOMweb URL: give http(s)://host[:port]/path")
    if parts.username or parts.password:
        raise UserError(
            "the PACS URL holds credentials: remove them and set"
            f" {ENV_USERNAME}/{ENV_PASSWORD} or {ENV_TOKEN}, or use the PACS config file"
        )


def _check_dimse_url(url: str) -> None:
    """A DIMSE URL names the PACS's AE title, host and port, and nothing else."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    aet = parts.username or ""
    if (
        not parts.hostname
        or port is None
        or parts.password is not None
        or parts.path.strip("/")
        or parts.query
        or parts.fragment
        or not 1 <= len(aet) <= 16
        or any(not " " <= c <= "~" or c == "\\" for c in aet)
    ):
        raise UserError(
            f"{url!r} is not a DIMSE URL: give dicom://CALLED_AET@host:port (the PACS's AE title, 1 to 16"
            " characters, its host and DICOM port; DIMSE takes no password)"
        )


def _auth(username: Any, password: Any, token: Any, where: str) -> PacsAuth:
    if token:
        if username or password:
            raise UserError(
                f"{where} gives both a bearer token and a user name/password for the PACS: keep one"
            )
        return PacsAuth(kind="bearer", token=SecretStr(str(token)))
    if username or password:
        if not (username and password):
            raise UserError(
                f"{where} gives a PACS user name without a password, or a password without a user"
            )
        return PacsAuth(kind="basic", username=str(username), password=SecretStr(str(password)))
    return PacsAuth()


def _config_path(env: Mapping[str, str], given: Path | None) -> Path | None:
    """The config file to read: the one given, ``$DXGRAPH_PACS_CONFIG`` (must exist), or the default if present."""
    if given is not None:
        path = given
    elif env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG]).expanduser()
    else:
        default = Path(env.get("HOME", str(Path.home()))) / ".config" / "dxgraph" / "pacs.yaml"
        return default if default.is_file() else None
    if not path.is_file():
        raise UserError(f"the PACS config file {path} does not exist")
    return path


def _file_entry(url: str, path: Path | None) -> dict[str, Any]:
    """The config file's entry for ``url`` (the longest URL prefix), or an empty one."""
    if path is None:
        return {}
    import yaml

    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"the PACS config file {path} holds credentials but others may read it (mode"
            f" {stat.S_IMODE(mode):o}): run chmod 600 {path}"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"cannot read the PACS config file {path}: {' '.join(str(e).split())}") from None
    entries = data.get("pacs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("url"), str) for e in entries
    ):
        raise UserError(f"the PACS config file {path} needs a list 'pacs:' of entries, each with a 'url'")
    want = url.rstrip("/") + "/"
    matches = [e for e in entries if want.startswith(str(e["url"]).rstrip("/") + "/")]
    return dict(max(matches, key=lambda e: len(str(e["url"])))) if matches else {}
